"""The words of a run's own report (`report.md`) for a W&B Report: the title, the sections by heading,
each study's prose (caption and findings, without its tables and images). The one place that knows
report.md's layout, so a redesigned report changes only this seam."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPORT_MD = "report.md"


@dataclass(frozen=True)
class ReportText:
    """report.md cut at its `## ` headings; empty when the run has no report yet."""

    title: str = ""
    intro: str = ""
    sections: dict[str, str] = field(default_factory=dict)  # heading -> markdown body, in file order

    def section(self, *words: str) -> tuple[str, str] | None:
        """The first (heading, body) whose heading contains every word (case-insensitive)."""
        for heading, body in self.sections.items():
            if all(w.lower() in heading.lower() for w in words):
                return heading, body
        return None

    def study(self, name: str) -> str:
        """A study's prose: its section's paragraphs, tables, images and code left out. Its section
        is the first heading naming it (as a word or in backticks), one that says "study" first."""
        named = [h for h in self.sections if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", h)]
        named.sort(key=lambda h: "study" not in h.lower())  # stable: file order within each kind
        return prose(self.sections[named[0]]) if named else ""


def prose(markdown: str) -> str:
    """Paragraphs only: table rows, images and fenced code dropped, blank lines collapsed."""
    out: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.lstrip().startswith(("|", "![")):
            continue
        if line.strip() or (out and out[-1]):
            out.append(line.rstrip())
    return "\n".join(out).strip()


# The paragraphs that open and close a quality study's section in report.md (bench.quality.report
# .study_section): a W&B Report that states the hypothesis and verdict itself leaves them out.
LEAD_PARAGRAPHS = ("**Hypothesis:**", "**Verdict:")


def without_paragraphs(markdown: str, starts: tuple[str, ...] = LEAD_PARAGRAPHS) -> str:
    """`markdown` less every paragraph (blank-line separated) that begins with one of `starts`."""
    paragraphs = re.split(r"\n\s*\n", markdown.strip())
    return "\n\n".join(p for p in paragraphs if p and not p.lstrip().startswith(starts)).strip()


def parse_report(text: str) -> ReportText:
    """Split markdown at `# ` (title) and `## ` (sections) headings outside code fences."""
    title, intro, sections = "", [], {}
    current: list[str] | None = None
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("# ") and not title:
            title = line[2:].strip()
        elif not fenced and line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        else:
            (intro if current is None else current).append(line)
    return ReportText(title, "\n".join(intro).strip(), {h: "\n".join(b).strip() for h, b in sections.items()})


def read_report_text(run_dir: Path) -> ReportText:
    """The run's report.md parsed, or an empty ReportText when there is none (run `bench report`)."""
    path = Path(run_dir) / REPORT_MD
    try:
        return parse_report(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return ReportText()
