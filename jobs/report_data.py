"""What the report and `compare` read from a run directory, and the small tables they show.

A run directory's `summary.json`, `per_class_accuracy/` (whole: one row per class) and the
columns of `predictions/` the report needs (not the top-k lists). Two readers return the same
`RunData`:
- `read_with_spark`: any filesystem Spark reads (the end of a run, hdfs://, s3:// on EMR, dbfs:/);
- `read_local`: a local run directory with pyarrow, no Spark (`infer-dogs report ./run`).
The driver holds at most `MAX_PREDICTION_ROWS` prediction rows (about 100 bytes each): larger
runs are read as a seeded sample, and the report says so. Per-breed numbers always come whole
from `per_class_accuracy/`.

The tables (`top_confusions`, `confidence_bins`, `pick_mistakes`) are plain pandas functions of
that frame: one implementation, whichever reader filled it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from jobs.outputs import RunPaths

PREDICTION_COLUMNS = ("path", "image_id", "wnid", "label", "pred_wnid", "pred_label", "pred_prob", "correct",
                      "error_kind")
MAX_PREDICTION_ROWS = 1_000_000
SAMPLE_SEED = 0
HISTOGRAM_BINS = 20
RELIABILITY_BINS = 10


class RunDataError(Exception):
    """The folder is not a complete run directory (exit code 2 for `report` and `compare`)."""


@dataclass(frozen=True)
class RunData:
    root: str
    summary: dict[str, Any]
    per_class: pd.DataFrame  # per_class_accuracy, most_confused_with as dicts (or None)
    predictions: pd.DataFrame  # PREDICTION_COLUMNS, `correct` as pandas' nullable boolean
    predictions_total: int  # rows in predictions/ (more than len(predictions) when sampled)

    @property
    def sampled(self) -> bool:
        return len(self.predictions) < self.predictions_total


def _normalise_per_class(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["most_confused_with"] = [
        (c.asDict() if hasattr(c, "asDict") else dict(c)) if c is not None and not _is_nan(c) else None
        for c in table["most_confused_with"]
    ]
    return table.sort_values(["label", "wnid"], na_position="last", ignore_index=True)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _normalise_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[list(PREDICTION_COLUMNS)].copy()
    frame["correct"] = frame["correct"].astype("boolean")
    frame["pred_prob"] = frame["pred_prob"].astype("float64")
    return frame.sort_values("path", ignore_index=True)


def read_local(root: str | Path, with_predictions: bool = True) -> RunData:
    """A local run directory (plain path or file:// URI), read with pyarrow."""
    import pyarrow.dataset as ds

    from udfs.storage import local_path

    folder = local_path(str(root))
    paths = RunPaths(str(folder))
    summary_file = Path(paths.summary)
    if not summary_file.is_file():
        raise RunDataError(f"{root} is not a complete run: summary.json is missing")
    for needed in (paths.per_class, paths.predictions):
        if not Path(needed).is_dir():
            raise RunDataError(f"{root} is not a complete run: {Path(needed).name}/ is missing")
    summary = json.loads(summary_file.read_text())
    per_class = ds.dataset(paths.per_class, format="parquet").to_table().to_pandas()
    dataset = ds.dataset(paths.predictions, format="parquet")
    total = dataset.count_rows()
    if not with_predictions:
        frame = pd.DataFrame({name: pd.Series(dtype="object") for name in PREDICTION_COLUMNS})
    elif total <= MAX_PREDICTION_ROWS:
        frame = dataset.to_table(columns=list(PREDICTION_COLUMNS)).to_pandas()
    else:
        rng = np.random.default_rng(SAMPLE_SEED)
        keep = MAX_PREDICTION_ROWS / total
        parts = [batch.filter(rng.random(batch.num_rows) < keep).to_pandas()
                 for batch in dataset.to_batches(columns=list(PREDICTION_COLUMNS))]
        frame = pd.concat(parts, ignore_index=True)
    return RunData(str(root), summary, _normalise_per_class(per_class), _normalise_predictions(frame), total)


def read_with_spark(spark, root: str, summary: Optional[dict[str, Any]] = None,
                    with_predictions: bool = True) -> RunData:
    """A run directory on any filesystem Spark can read; `summary` saves reading summary.json."""
    from jobs.outputs import HadoopFiles

    paths = RunPaths(root)
    if summary is None:
        files = HadoopFiles(spark)
        if not files.exists(paths.summary):
            raise RunDataError(f"{root} is not a complete run: summary.json is missing")
        summary = json.loads(files.read_text(paths.summary))
    per_class = spark.read.parquet(paths.per_class).toPandas()
    predictions = spark.read.parquet(paths.predictions).select(*PREDICTION_COLUMNS)
    total = summary.get("counts", {}).get("images")
    if total is None:
        total = predictions.count()
    if not with_predictions:
        predictions = predictions.limit(0)
    elif total > MAX_PREDICTION_ROWS:
        predictions = predictions.sample(fraction=MAX_PREDICTION_ROWS / total, seed=SAMPLE_SEED)
    return RunData(root, summary, _normalise_per_class(per_class), _normalise_predictions(predictions.toPandas()),
                   int(total))


def scored_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows with a prediction (error rows have none)."""
    return predictions[predictions["error_kind"].isna() & predictions["pred_prob"].notna()]


def top_confusions(predictions: pd.DataFrame, limit: int = 15) -> pd.DataFrame:
    """The most frequent (true class -> predicted class) mistakes, with their share of the class."""
    scored = scored_rows(predictions)
    known = scored[scored["correct"].notna()]
    wrong = known[known["correct"] == False]  # noqa: E712 - nullable boolean column
    columns = ["wnid", "label", "pred_wnid", "pred_label", "count", "share_of_class"]
    if wrong.empty:
        return pd.DataFrame(columns=columns)
    per_class = known.groupby(["wnid", "label"], dropna=False).size().rename("class_scored").reset_index()
    counts = (  # merge, not join: classes without a wnid (a --classes list of names) keep their share
        wrong.groupby(["wnid", "label", "pred_wnid", "pred_label"], dropna=False).size().rename("count").reset_index()
        .merge(per_class, on=["wnid", "label"], how="left")
    )
    counts["share_of_class"] = counts["count"] / counts["class_scored"]
    counts = counts.sort_values(["count", "label", "pred_label"], ascending=[False, True, True], ignore_index=True)
    return counts[columns].head(limit)


def confidence_bins(predictions: pd.DataFrame, bins: int = HISTOGRAM_BINS) -> pd.DataFrame:
    """Scored images by top-1 probability: count, right, wrong, no truth, mean confidence, accuracy."""
    scored = scored_rows(predictions)
    prob = scored["pred_prob"].to_numpy(dtype="float64")
    index = np.minimum((prob * bins).astype(int), bins - 1)
    correct = scored["correct"]
    rows = []
    for b in range(bins):
        in_bin = index == b
        known = in_bin & correct.notna().to_numpy()
        right = known & (correct.fillna(False).to_numpy(dtype=bool))
        n_known = int(known.sum())
        rows.append({
            "bin_low": b / bins,
            "bin_high": (b + 1) / bins,
            "n": int(in_bin.sum()),
            "n_correct": int(right.sum()),
            "n_wrong": n_known - int(right.sum()),
            "n_no_truth": int(in_bin.sum()) - n_known,
            "mean_confidence": float(prob[known].mean()) if n_known else None,
            "accuracy": float(right.sum() / n_known) if n_known else None,
        })
    return pd.DataFrame(rows)


def expected_calibration_error(bins: pd.DataFrame) -> Optional[float]:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of known images."""
    known = bins["n_correct"] + bins["n_wrong"]
    total = int(known.sum())
    if total == 0:
        return None
    used = bins[known > 0]
    gaps = (used["accuracy"].astype(float) - used["mean_confidence"].astype(float)).abs()
    return float((gaps * known[known > 0] / total).sum())


def pick_mistakes(predictions: pd.DataFrame, limit: int = 24, per_class: int = 2) -> pd.DataFrame:
    """Wrong predictions to show: the most confident first, at most `per_class` per true class
    until every class with mistakes has had its turn, then the next most confident."""
    scored = scored_rows(predictions)
    wrong = scored[scored["correct"] == False]  # noqa: E712
    wrong = wrong.sort_values(["pred_prob", "path"], ascending=[False, True])
    rank = wrong.groupby(["wnid", "label"], dropna=False).cumcount()
    first = wrong[rank < per_class]
    rest = wrong[rank >= per_class]
    chosen = pd.concat([first, rest]).head(limit)
    return chosen.sort_values(["pred_prob", "path"], ascending=[False, True], ignore_index=True)
