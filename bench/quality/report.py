"""placeholder"""
from pathlib import Path
def write_report(run_dir: Path) -> Path:
    p = Path(run_dir) / "report.md"; p.write_text("placeholder\n"); return p
