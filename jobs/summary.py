"""The run summary: one dict for `summary.json`, and the text printed at the end of a run."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import pandas as pd

from jobs.listing import left_out_text, retried_text
from udfs.labels import IMAGENET
from udfs.s3_retry import RetryCounts
from udfs.settings import Settings

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: this run used a seeded random model (--random-weights); "
    "its predictions and accuracy numbers are meaningless and exist only to test the pipeline."
)


def worker_report(task_records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per Python worker process: where it ran, its device, builds, tasks, images."""
    workers: dict[tuple, dict[str, Any]] = {}
    for record in task_records:
        key = (record["host"], record["pid"])
        worker = workers.setdefault(key, {
            "host": record["host"], "pid": record["pid"], "executor_pid": record["executor_pid"],
            "devices": set(), "precisions": set(), "gpu_addresses": set(), "model_builds": 0, "tasks": 0, "images": 0,
            "peak_rss_mb": 0.0,
        })
        worker["peak_rss_mb"] = max(worker["peak_rss_mb"], record.get("peak_rss_mb", 0.0))
        worker["devices"].add(record["device"])
        worker["precisions"].add(record["precision"])
        worker["gpu_addresses"].update(record["gpu_addresses"])
        worker["model_builds"] += int(record["model_built"])
        worker["tasks"] += 1
        worker["images"] += record["images"]
    report = []
    for worker in sorted(workers.values(), key=lambda w: (w["host"], w["executor_pid"], w["pid"])):
        worker["devices"] = sorted(worker["devices"])
        worker["precisions"] = sorted(worker["precisions"])
        worker["gpu_addresses"] = sorted(worker["gpu_addresses"])
        report.append(worker)
    return report


def inference_span(task_records: list[dict[str, Any]]) -> Optional[float]:
    """Wall time from the first scoring task's start to the last one's end."""
    if not task_records:
        return None
    return max(r["finished"] for r in task_records) - min(r["started"] for r in task_records)


def s3_retry_report(listing_retries: Optional[dict[str, int]],
                    task_records: Iterable[dict[str, Any]]) -> Optional[dict[str, dict[str, int]]]:
    """What udfs.s3_retry did: image reads (summed over the scoring tasks that counted) and listing
    pages; None for a run that read nothing from S3."""
    reads = RetryCounts().as_dict()
    for record in task_records:
        for key, value in record.get("s3_retries", {}).items():
            reads[key] += value
    if listing_retries is None and not any(reads.values()):
        return None
    listing = listing_retries or RetryCounts().as_dict()
    return {
        "reads": {"requests_retried": reads["requests_retried"], "throttling_responses": reads["throttled"],
                  "images_retried": reads["retried"], "images_given_up": reads["gave_up"]},
        "listing": {"requests_retried": listing["requests_retried"], "throttling_responses": listing["throttled"],
                    "pages_retried": listing["retried"]},
    }


def s3_retry_text(report: dict[str, dict[str, int]]) -> str:
    """`images: 37 requests retried for 30 images (12 throttling answers), 0 still failing after
    retries; listing: none`."""
    reads, listing = report["reads"], report["listing"]
    images = (retried_text(reads["requests_retried"], reads["images_retried"], "images", reads["throttling_responses"])
              + f", {reads['images_given_up']:,} still failing after retries"
              if reads["requests_retried"] or reads["images_given_up"] else "none")
    pages = (retried_text(listing["requests_retried"], listing["pages_retried"], "pages",
                          listing["throttling_responses"]) if listing["requests_retried"] else "none")
    return f"images: {images}; listing: {pages}"


def build_summary(
    settings: Settings,
    totals: dict[str, Any],
    listing_counts: dict[str, int],
    task_records: list[dict[str, Any]],
    timings: dict[str, float],
    unknown_truth: list[str],
    spark_info: dict[str, Any],
    outputs: dict[str, str],
    listing_retries: Optional[dict[str, int]] = None,
) -> dict[str, Any]:
    source = settings.weights_source
    workers = worker_report(task_records)
    inference_s = inference_span(task_records)
    images = totals["images"]
    accuracy_note = None
    if totals["with_truth"] == 0:
        accuracy_note = ("no image had a known truth: no listed folder is one of the model's classes (by the "
                         "wnid of a <wnid>-<Breed> folder or --label-map, else by its exact name)")
    elif unknown_truth:
        accuracy_note = (f"{len(unknown_truth)} listed class(es) are not among the model's classes; their "
                         "images count in no accuracy (truth_not_in_model)")
    summary = {
        "run_id": settings.run_id,
        "status": "complete",
        "warning": RANDOM_WEIGHTS_WARNING if source.is_random else None,
        "input": settings.input,
        "outputs": outputs,
        "model": settings.model,
        "model_source": settings.model_source.describe(),  # library, architecture, classes, preprocessing
        "weights": {"kind": source.kind, "description": source.description, "sha256": source.sha256,
                    "seed": source.seed},
        "random_weights": source.is_random,
        "devices": sorted({d for w in workers for d in w["devices"]}),
        "precisions": sorted({p for w in workers for p in w["precisions"]}),  # what ran (settings: what was asked)
        "model_builds": sum(w["model_builds"] for w in workers),
        "workers": workers,
        "counts": {**listing_counts, "images": images, "scored": totals["scored"], "errors": totals["errors"],
                   "with_truth": totals["with_truth"]},
        "errors_by_kind": totals["errors_by_kind"],
        "s3_retries": s3_retry_report(listing_retries, task_records),  # udfs.s3_retry's counts; None: no S3
        "accuracy": {"top1": totals["top1_accuracy"], "top5": totals["top5_accuracy"], "note": accuracy_note,
                     "truth_not_in_model": unknown_truth},
        "timing_s": {**{k: round(v, 3) for k, v in timings.items()},
                     "inference": round(inference_s, 3) if inference_s is not None else None,
                     "model_build_max": round(max((r.get("model_build_seconds", 0.0) for r in task_records),
                                                  default=0.0), 3)},
        "images_per_s": {
            "inference": round(images / inference_s, 2) if inference_s else None,
            "end_to_end": round(images / timings["total"], 2) if timings.get("total") else None,
        },
        "spark": spark_info,
        "settings": {
            "batch_size": settings.batch_size or "auto", "arrow_batch_size": settings.arrow_batch_size,
            "top_k": settings.top_k, "precision": settings.precision, "channels_last": settings.channels_last,
            "decode_threads": settings.decode_threads, "torch_threads": settings.torch_threads,
            "tasks_per_slot": settings.tasks_per_slot, "limit": settings.limit,
        },
    }
    return summary


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


# Wall-time phases in the order they happen; other keys are shown after them under their own name.
TIMING_NAMES = {
    "listing": "listing",
    "spark_start": "Spark start",
    "weights": "weights",
    "score_and_write_predictions": "scoring + writing predictions",
    "aggregate": "per-class aggregation",
    "report": "report",
}


def wall_time_text(timing: dict[str, Any]) -> str:
    """`42.3 s: listing 0.0, Spark start 14.9, ..., (inference span 4.4)`."""
    parts = [f"{TIMING_NAMES[k]} {timing[k]:.1f}" for k in TIMING_NAMES if timing.get(k) is not None]
    parts += [f"{k} {v:.1f}" for k, v in timing.items()
              if k not in TIMING_NAMES and k not in ("total", "inference", "model_build_max")
              and isinstance(v, (int, float))]
    text = ", ".join(parts)
    if timing.get("inference") is not None:
        build = f", model build up to {timing['model_build_max']:.1f} per worker" if timing.get("model_build_max") else ""
        text += f" (first scoring task start to last end: {timing['inference']:.1f}{build})"
    total = timing.get("total")
    return f"{total:.1f} s: {text}" if total is not None else text


def model_text(summary: dict[str, Any]) -> str:
    """`timm/tf_efficientnet_lite0 (timm tf_efficientnet_lite0, 1000 classes)`; with --classes,
    `resnet50 (torchvision resnet50, 120 classes from classes.txt)`."""
    source = summary.get("model_source")
    if not source:
        return str(summary["model"])
    origin = source.get("classes")
    from_file = f" from {origin}" if origin and origin != IMAGENET else ""
    return (f"{summary['model']} ({source['library']} {source['architecture']}, {source['num_classes']} "
            f"classes{from_file})")


def preprocessing_text(prep: dict[str, Any]) -> str:
    """`resize 256 bicubic, centre crop 224, mean 0.5 0.5 0.5, std 0.5 0.5 0.5`."""
    def numbers(values) -> str:
        return " ".join(f"{v:g}" for v in values)

    return (f"resize {'x'.join(map(str, prep['resize']))} {prep['interpolation']}, centre crop "
            f"{'x'.join(map(str, prep['crop']))}, mean {numbers(prep['mean'])}, std {numbers(prep['std'])}")


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of the run summary: the printed table and the report's table."""
    counts, accuracy, rate = summary["counts"], summary["accuracy"], summary["images_per_s"]
    weights = summary["weights"]
    errors = summary["errors_by_kind"]
    precisions = f" ({', '.join(summary['precisions'])})" if summary["precisions"] else ""  # none: nothing scored
    left_out = left_out_text(counts.get("skipped_non_image", 0), counts.get("skipped_in_output", 0),
                             counts.get("skipped_bad_name", 0))
    rows = [
        ("run", f"{summary['run_id']} ({summary.get('status', 'complete')})"),
        ("model", f"{model_text(summary)}, weights {weights['description']} (sha256 {str(weights['sha256'])[:12]})"),
        ("input", str(summary["input"])),
        ("devices", f"{', '.join(summary['devices']) or 'n/a'}{precisions}: {len(summary['workers'])} Python "
                    f"worker(s), {summary['model_builds']} model build(s)"),
        ("images", f"{counts['images']:,}: {counts['scored']:,} scored, {counts['errors']:,} errors "
                   f"({left_out})"),
        ("errors by kind", ", ".join(f"{k} {v:,}" for k, v in errors.items()) if errors else "none"),
        *([("S3 retries", s3_retry_text(summary["s3_retries"]))] if summary.get("s3_retries") else []),
        ("top-1 accuracy", f"{_pct(accuracy['top1'])} over {counts['with_truth']:,} images with a known truth"),
        ("top-5 accuracy", _pct(accuracy["top5"])),
    ]
    if summary.get("model_source"):  # runs written before model sources existed have none
        rows.insert(2, ("preprocessing", preprocessing_text(summary["model_source"]["preprocessing"])))
    if accuracy.get("note"):
        rows.append(("accuracy note", accuracy["note"]))
    rates = {name: "n/a" if value is None else value for name, value in rate.items()}  # nothing scored: no rate
    rows.append(("images/s", f"{rates['inference']} inference, {rates['end_to_end']} end to end"))
    rows.append(("wall time", wall_time_text(summary["timing_s"])))
    rows += [(name.replace("_", " "), str(uri)) for name, uri in summary["outputs"].items()]
    return rows


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    if summary["warning"]:
        bar = "!" * 100
        lines += [bar, summary["warning"], bar]
    rows = summary_rows(summary)
    width = max(len(name) for name, _ in rows)
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def format_per_class(table: pd.DataFrame, limit: Optional[int] = None) -> str:
    """The per-class table as text, worst top-1 accuracy first."""
    if table.empty:
        return "(no classes)"
    view = table.copy()
    confusions = [c.asDict() if hasattr(c, "asDict") else c for c in view["most_confused_with"]]
    view["confused_with"] = [
        # int(): a struct column read back with nulls in it can bring its counts as floats
        f"{c['label']} ({int(c['count']):,})" if isinstance(c, dict) and c.get("label") else "" for c in confusions
    ]
    view = view.sort_values(["top1_accuracy", "label"], na_position="last")
    columns = ["wnid", "label", "n_images", "n_errors", "top1_accuracy", "top5_accuracy", "mean_pred_prob", "confused_with"]
    view = view[columns].head(limit) if limit else view[columns]
    return view.to_string(index=False, float_format=lambda x: f"{x:.3f}", na_rep="n/a")
