"""Table 2 report, regenerated from `records.jsonl` and `run.json` alone: the measured train x eval
accuracy matrix beside the paper's, a heatmap, training curves, hyper-parameters, environment."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from bench import store
from bench.duplication import copy_distance as cd

# Paper Table 2 (Kitaev et al. 2020), accuracy in %: (train attention, n_hashes) -> column.
PAPER_COLUMNS = (("full", None), ("lsh", 8), ("lsh", 4), ("lsh", 2), ("lsh", 1))
PAPER_TABLE2: dict[tuple[str, Optional[int]], tuple[float, ...]] = {
    ("full", None): (100.0, 94.8, 92.5, 76.9, 52.5),
    ("lsh", 4): (0.8, 100.0, 99.9, 99.4, 91.9),
    ("lsh", 2): (0.8, 100.0, 99.9, 98.1, 86.8),
    ("lsh", 1): (0.8, 99.9, 99.6, 94.8, 77.9),
}


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the run, in file order (bench.store's reader: a torn last line is skipped)."""
    return store.read_records(Path(run_dir) / store.RECORDS)


NO_SELF_MASK = "full, no self-mask"  # a column the paper does not have


def _key(params: dict[str, Any]) -> tuple[str, Optional[int]]:
    if params["attention"] == "local":
        return "local", None
    if params.get("self_mask") is False:
        return NO_SELF_MASK, None
    kind = "lsh" if params["attention"] == "lsh" else "full"  # sdpa is full attention too
    return kind, params.get("n_hashes") if kind == "lsh" else None


def _in_study(record: dict[str, Any], study: str) -> bool:
    """Whether a record belongs to `study`; records from before studies were named are Table 2's."""
    return study in (record.get("studies") or ["table2", "train"])


def _label(key: tuple[str, Optional[int]]) -> str:
    return "Full" if key[0] == "full" else f"LSH-{key[1]}"


def _order(spec: dict[str, Any], role: str) -> list[str]:
    grid = spec.get("studies", {}).get("table2", {}).get("grid", {})
    return list(grid.get(role, []))


def accuracy_matrix(records: Iterable[dict[str, Any]], spec: Optional[dict[str, Any]] = None) -> pd.DataFrame:
    """Accuracy in % of the latest ok eval records: rows = trained model, columns = eval setting
    (names as in the suite, in suite order when `spec` is the run's suite_spec); NaN where missing."""
    rows = [r for r in store.latest_by_point(records).values()
            if r["params"].get("role") == "eval" and r["status"] == "ok" and _in_study(r, "table2")]
    if not rows:
        return pd.DataFrame(dtype=float)
    df = pd.DataFrame([{"train_model": r["params"]["train_model"], "eval_setting": r["params"]["eval_setting"],
                        "accuracy": 100.0 * r["metrics"]["accuracy"]} for r in rows])
    matrix = df.pivot(index="train_model", columns="eval_setting", values="accuracy")
    spec = spec or {}
    row_order = [m for m in _order(spec, "train_model") if m in matrix.index] or sorted(matrix.index)
    col_order = [c for c in _order(spec, "eval_setting") if c in matrix.columns] or sorted(matrix.columns)
    return matrix.loc[row_order, col_order]


def setting_keys(records: Iterable[dict[str, Any]]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(train model name -> (attention, n_hashes), eval setting name -> (attention, n_hashes))."""
    trained, evaluated = {}, {}
    for r in records:
        p = r["params"]
        if p.get("role") == "train" and _in_study(r, "train"):
            trained[p["train_model"]] = _key(p)
        elif p.get("role") == "eval" and _in_study(r, "table2"):
            evaluated[p["eval_setting"]] = _key(p)
    return trained, evaluated


def paper_matrix(matrix: pd.DataFrame, records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The paper's numbers laid out like `matrix` (same row/column names); NaN where the paper has none."""
    records = list(records)
    trained, evaluated = setting_keys(records)
    col_index = {key: i for i, key in enumerate(PAPER_COLUMNS)}
    out = pd.DataFrame(index=matrix.index, columns=matrix.columns, dtype=float)
    for row in matrix.index:
        for col in matrix.columns:
            paper_row = PAPER_TABLE2.get(trained.get(row, ("?", None)))
            j = col_index.get(evaluated.get(col, ("?", None)))
            if paper_row is not None and j is not None:
                out.loc[row, col] = paper_row[j]
    return out


def side_by_side(measured: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Cells 'measured (paper)' in %, e.g. '97.3 (94.8)'; '-' where nothing was measured."""
    def cell(m: float, p: float) -> str:
        ms = "-" if pd.isna(m) else f"{m:.1f}"
        return ms if pd.isna(p) else f"{ms} ({p:.1f})"
    return pd.DataFrame({c: [cell(measured.loc[r, c], paper.loc[r, c]) for r in measured.index]
                         for c in measured.columns}, index=measured.index)


def training_curves(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Long table (model, step, loss, accuracy, lr, train_s) from the latest ok training records."""
    rows = []
    for r in store.latest_by_point(records).values():
        if r["params"].get("role") == "train" and r["status"] == "ok" and _in_study(r, "train"):
            rows += [{"model": r["params"]["train_model"], **c} for c in r.get("curve", [])]
    return pd.DataFrame(rows, columns=["model", "step", "loss", "accuracy", "lr", "train_s"])


def training_summary(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in store.latest_by_point(records).values():
        if r["params"].get("role") == "train":
            m = r["metrics"]
            rows.append({"model": r["params"]["train_model"], "seq_len": r["params"].get("seq_len"),
                         "status": r["status"], "steps": m.get("steps_done"),
                         "final loss": m.get("final_loss"), "train accuracy %": _pct(m.get("train_accuracy")),
                         "step ms (median)": m.get("step_ms_median"), "train s": m.get("train_s"),
                         "peak alloc MiB": m.get("peak_alloc_mib")})
    return pd.DataFrame(rows)


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100.0 * x


def plot_heatmap(measured: pd.DataFrame, paper: pd.DataFrame, path: Path) -> Path:
    """Two annotated heatmaps, measured and paper, same colour scale (0-100 %)."""
    # The plotting stack loads on first draw: seaborn takes seconds, and publishing reads reports only.
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, data, title in ((axes[0], measured, "measured"), (axes[1], paper, "paper (Table 2)")):
        sns.heatmap(data.astype(float), ax=ax, vmin=0, vmax=100, annot=True, fmt=".1f", cmap="viridis",
                    cbar=ax is axes[1], cbar_kws={"label": "accuracy %"})
        ax.set_title(f"duplication accuracy, {title}")
        ax.set_xlabel("evaluated with")
        ax.set_ylabel("trained with")
    fig.savefig(path, dpi=120)
    return path


def plot_curves(curves: pd.DataFrame, path: Path) -> Path:
    """Training loss (log scale) and accuracy on the second copy against step, one line per model."""
    # The plotting stack loads on first draw (see plot_heatmap).
    import seaborn as sns
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    if not curves.empty:
        sns.lineplot(data=curves, x="step", y="loss", hue="model", ax=ax_loss)
        sns.lineplot(data=curves.assign(accuracy=100 * curves["accuracy"]), x="step", y="accuracy",
                     hue="model", ax=ax_acc)
        ax_loss.set_yscale("log")
    ax_acc.set_ylabel("accuracy %")
    ax_loss.set_title("training loss (second copy of w)")
    ax_acc.set_title("training accuracy % (second copy of w)")
    fig.savefig(path, dpi=120)
    return path


def findings(measured: pd.DataFrame, paper: pd.DataFrame) -> list[str]:
    """Sentences with numbers from the accuracy matrix: each trained model's best and worst evaluation
    setting, and where and by how much the measured matrix differs from the paper's."""
    if measured.empty:
        return []
    where = " ([matrix](#accuracy-trained-rows-x-evaluated-columns-measured-paper), [heatmap](table2_heatmap.png))"
    out = []
    for row in measured.index:
        values = measured.loc[row].dropna()
        if values.empty:
            continue
        hi, lo = values.idxmax(), values.idxmin()
        out.append(f"- `{row}` scores {values[hi]:.1f}% evaluated as `{hi}` and {values[lo]:.1f}% as `{lo}` "
                   f"({values[lo] - values[hi]:+.1f} points).{where}")
    diff = (measured - paper).stack().dropna() if not paper.empty else pd.Series(dtype=float)
    if not diff.empty:
        (row, col), worst = diff.abs().idxmax(), diff.loc[diff.abs().idxmax()]
        out.append(f"- Against the paper's Table 2 ({len(diff)} cells in common): mean absolute difference "
                   f"{diff.abs().mean():.1f} points; the largest, `{row}` evaluated as `{col}`: "
                   f"{measured.loc[row, col]:.1f}% measured vs {paper.loc[row, col]:.1f}% ({worst:+.1f}).{where}")
    return out


def _copy_distance_section(run_dir: Path, spec: dict[str, Any], records: list[dict[str, Any]],
                           chance: float) -> tuple[list[str], list[str]]:
    """(the report section, its findings) of the copy-distance study; nothing when the run has none."""
    study = spec.get("studies", {}).get(cd.STUDY)
    table = cd.accuracy_by_length(records, spec)
    if not study or table.empty:
        return [], []
    window = study.get("window")
    kinds = {s["name"]: s["attention"] for s in study.get("grid", {}).get("settings", [])}
    model = spec.get("model", {})
    caption = (f"Each model trained ({spec.get('train', {}).get('steps')} steps) and scored at each length; "
               f"{model.get('n_layers')} layer, d_model {model.get('d_model')}, chunk_len {model.get('chunk_len')} "
               f"(local: {window} keys back at most), {spec.get('task', {}).get('n_symbols')} symbols.")
    cd.plot_copy_distance(table, chance, window, caption, run_dir / "copy_distance.png")
    table.round(2).to_csv(run_dir / "copy_distance.csv")
    section = ["## Copy distance: accuracy against length", "",
               f"{study.get('description', '')}. {caption} Accuracy % on the second copy, chance {chance:.1f}%.", "",
               table.round(1).to_markdown(), "", "![copy distance](copy_distance.png)", ""]
    return section, cd.copy_findings(table, chance, window, kinds)


def _table(df: pd.DataFrame, **kw) -> str:
    return df.to_markdown(**kw) if not df.empty else "_nothing recorded yet_"


def _kv(d: dict[str, Any]) -> str:
    return "\n".join(f"- `{k}`: {v}" for k, v in d.items())


def write_report(run_dir: Path) -> Path:
    """Write report.md, table2.csv, table2_heatmap.png and training_curves.png into `run_dir`."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    spec, env = run.get("suite_spec", {}), run.get("environment", {})
    records = read_records(run_dir)
    measured = accuracy_matrix(records, spec)
    paper = paper_matrix(measured, records)
    curves = training_curves(records)
    problems = [r for r in store.latest_by_point(records).values() if r["status"] != "ok"]
    task_spec = spec.get("task", {})
    chance = 100 / max(1, task_spec.get("n_symbols", 1))
    trained, evaluated = setting_keys(records)
    copy_lines = _copy_distance_section(run_dir, spec, records, chance)
    if not measured.empty:
        measured.round(2).to_csv(run_dir / "table2.csv")
        plot_heatmap(measured, paper, run_dir / "table2_heatmap.png")
    plot_curves(curves, run_dir / "training_curves.png")
    task, train = spec.get("task", {}), spec.get("train", {})
    lines = [
        f"# Duplication task (paper Table 2): {run.get('suite')} / {run.get('run_id')}",
        "",
        f"Profile `{run.get('profile')}` on `{run.get('device')}`. {spec.get('description', '')}",
        f"Sequences `0 w 0 w` of length {task.get('seq_len')}, w of {task.get('half_len', 0) - 1} symbols "
        f"from 1..{task.get('n_symbols')}; accuracy = argmax next-symbol accuracy on the second copy of w, "
        f"{spec.get('eval', {}).get('batches')} x {spec.get('eval', {}).get('batch_size')} held-out sequences "
        f"(seed {spec.get('eval', {}).get('seed')}). Chance: {100 / max(1, task.get('n_symbols', 1)):.1f}%.",
        "",
        "## Findings",
        "",
        "_Computed from this run's records._",
        "",
        *(findings(measured, paper) or ["_No evaluated model yet._"]),
        *cd.self_mask_findings(measured, evaluated, trained, chance, (NO_SELF_MASK, None)),
        *copy_lines[1],
        "",
        "## Accuracy %, trained (rows) x evaluated (columns): measured (paper)",
        "",
        _table(side_by_side(measured, paper)) if not measured.empty else _table(measured),
        "",
        "## Measured accuracy %",
        "",
        _table(measured.round(1)),
        "",
        "## Paper Table 2, accuracy % (length 1024, 127 symbols, 150K steps)",
        "",
        _table(pd.DataFrame([list(v) for v in PAPER_TABLE2.values()],
                            index=[_label(k) for k in PAPER_TABLE2], columns=[_label(k) for k in PAPER_COLUMNS])),
        "",
        "![Table 2 heatmap](table2_heatmap.png)" if not measured.empty else "",
        "",
        *copy_lines[0],
        "## Training",
        "",
        _table(training_summary(records), index=False, floatfmt=".3f"),
        "",
        "![training curves](training_curves.png)",
        "",
        "## Hyper-parameters (the paper states only the model and 150K steps)",
        "",
        _kv({**{f"task.{k}": v for k, v in task.items()}, **{f"train.{k}": v for k, v in train.items()},
             **{f"eval.{k}": v for k, v in spec.get("eval", {}).items()},
             **{f"model.{k}": v for k, v in spec.get("model", {}).items() if k not in ("attention", "n_hashes")}}),
        "",
        "## Environment",
        "",
        _kv(env),
    ]
    if problems:
        lines += ["", "## Points not ok", "",
                  _table(pd.DataFrame([{"point_id": r["point_id"], "status": r["status"], "reason": r["reason"]}
                                       for r in problems]), index=False)]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
