"""`infer-dogs compare RUN_A RUN_B`: per-breed accuracy differences between two runs.

Reads both runs' `summary.json` and `per_class_accuracy/` (small), joins the classes on
(`wnid`, `label`), and reports B minus A: overall top-1/top-5, then each breed's top-1 and top-5
with its scored image counts in both runs, largest changes first. Writes the table as CSV and a
chart as PNG. Warnings come first when the comparison is not like for like: a run with random
weights, or breeds whose scored image counts differ (different inputs, --limit, errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from jobs import charts
from jobs.report_data import RunData


@dataclass(frozen=True)
class Comparison:
    name_a: str
    name_b: str
    table: pd.DataFrame  # one row per class in either run
    overall: dict[str, dict[str, Optional[float]]]  # {"top1": {"a", "b", "delta"}, "top5": ...}
    warnings: list[str]


def _delta(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else b - a


def run_name(data: RunData) -> str:
    summary = data.summary
    return f"{summary.get('run_id')}: {summary.get('model')}, {summary.get('weights', {}).get('description', '')}"


def compare_runs(a: RunData, b: RunData) -> Comparison:
    columns = ["wnid", "label", "n_scored", "top1_accuracy", "top5_accuracy"]
    left = a.per_class[columns].assign(wnid=lambda t: t["wnid"].fillna(""))
    right = b.per_class[columns].assign(wnid=lambda t: t["wnid"].fillna(""))
    table = left.merge(right, on=["wnid", "label"], how="outer", suffixes=("_a", "_b"), indicator="present_in")
    for metric in ("top1", "top5"):
        table[f"delta_{metric}"] = (table[f"{metric}_accuracy_b"].astype(float)
                                    - table[f"{metric}_accuracy_a"].astype(float))
    table["abs_delta"] = table["delta_top1"].abs()
    table = table.sort_values(["abs_delta", "label"], ascending=[False, True], na_position="last", ignore_index=True)
    overall = {}
    for metric in ("top1", "top5"):
        value_a = a.summary.get("accuracy", {}).get(metric)
        value_b = b.summary.get("accuracy", {}).get(metric)
        overall[metric] = {"a": value_a, "b": value_b, "delta": _delta(value_a, value_b)}
    warnings = []
    for tag, data in (("A", a), ("B", b)):
        if data.summary.get("random_weights"):
            warnings.append(f"run {tag} used RANDOM weights: its accuracy is meaningless, and so is this comparison")
    only = table[table["present_in"] != "both"]
    if not only.empty:
        warnings.append(f"{len(only)} class(es) appear in only one run: "
                        + ", ".join(f"{row.label} ({'A' if row.present_in == 'left_only' else 'B'})"
                                    for row in only.head(8).itertuples())
                        + (" ..." if len(only) > 8 else ""))
    both = table[table["present_in"] == "both"]
    differing = both[both["n_scored_a"] != both["n_scored_b"]]
    if not differing.empty:
        warnings.append(f"{len(differing)} class(es) have different scored image counts in A and B "
                        "(different inputs, --limit or errors): their differences mix images and models")
    table = table.drop(columns=["abs_delta", "present_in"])
    return Comparison(run_name(a), run_name(b), table, overall, warnings)


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{100 * value:.1f}%"


def _points(value: Optional[float]) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{100 * value:+.1f}"


def format_comparison(comparison: Comparison, limit: Optional[int] = None) -> str:
    lines = [f"!!! {w}" for w in comparison.warnings]
    lines += [f"A = {comparison.name_a}", f"B = {comparison.name_b}"]
    for metric, name in (("top1", "top-1"), ("top5", "top-5")):
        values = comparison.overall[metric]
        lines.append(f"overall {name}: A {_pct(values['a'])}  B {_pct(values['b'])}  "
                     f"B - A {_points(values['delta'])} points")
    table = comparison.table
    view = pd.DataFrame({
        "wnid": table["wnid"],
        "label": table["label"],
        "n A": table["n_scored_a"].map(lambda v: "-" if pd.isna(v) else f"{int(v)}"),
        "n B": table["n_scored_b"].map(lambda v: "-" if pd.isna(v) else f"{int(v)}"),
        "top-1 A": table["top1_accuracy_a"].map(_pct),
        "top-1 B": table["top1_accuracy_b"].map(_pct),
        "top-1 B-A": table["delta_top1"].map(_points),
        "top-5 B-A": table["delta_top5"].map(_points),
    })
    if limit:
        view = view.head(limit)
    lines += ["", "per breed, largest top-1 change first (B - A in percentage points):",
              view.to_string(index=False) if not view.empty else "(no classes)"]
    return "\n".join(lines)


def write_comparison(comparison: Comparison, folder: Path) -> tuple[Path, Path]:
    """compare_accuracy.png and compare_accuracy.csv in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    note = "RANDOM WEIGHTS in a compared run: meaningless" if any("RANDOM" in w for w in comparison.warnings) else None
    png = charts.accuracy_differences(comparison.table, folder / "compare_accuracy.png",
                                      comparison.name_a, comparison.name_b, note)
    csv = folder / "compare_accuracy.csv"
    comparison.table.to_csv(csv, index=False)
    return png, csv
