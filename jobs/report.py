"""`report.html`: one self-contained page per run, with its PNG charts beside it (driver side).

Built from a `jobs.report_data.RunData` (the written Parquet and the summary), at the end of a
run and by `infer-dogs report RUN_DIR`. The page embeds everything as base64 (charts and
thumbnails), so it can be mailed or attached to a ticket; the same charts are also written as
PNG files in `charts/` next to it. Contents: the run summary; per-breed top-1/top-5 accuracy
(chart and table); the most frequent confusions; a confidence histogram and a reliability
diagram; a grid of misclassified images (at most `MAX_THUMBNAILS`, the most confident mistakes
first, read from their paths: local or S3). A run with random weights says so at the top in
large type, and on every chart.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from jobs import charts
from jobs.outputs import RunPaths
from jobs.report_data import (
    RELIABILITY_BINS,
    RunData,
    confidence_bins,
    expected_calibration_error,
    pick_mistakes,
    top_confusions,
)
from jobs.summary import summary_rows
from udfs.decode import open_rgb
from udfs.errors import ImageTooLarge, S3RetriesExhausted
from udfs.settings import S3Options
from udfs.storage import is_local_uri, local_path, read_bytes

log = logging.getLogger(__name__)

MAX_THUMBNAILS = 24
THUMBNAIL_PX = 176
THUMBNAIL_MAX_BYTES = 32 * 1024 * 1024
THUMBNAIL_THREADS = 8
CONFUSIONS_SHOWN = 15
CHART_FILES = {
    "accuracy_by_breed": "accuracy_by_breed.png",
    "confusions": "confusions.png",
    "confidence": "confidence_histogram.png",
    "reliability": "reliability_diagram.png",
    "mistakes": "misclassified.png",
}
_THUMBNAIL_FAILURES = (OSError, ValueError, SyntaxError, BotoCoreError, ClientError, ImageTooLarge,
                       S3RetriesExhausted, Image.DecompressionBombError)


@dataclass(frozen=True)
class Thumbnail:
    path: str
    caption: str
    image: Optional[Image.Image]  # None: the file could not be read or decoded


def load_thumbnail(path: str, s3: S3Options) -> Optional[Image.Image]:
    """A small RGB copy of the image at `path` (local or s3://), None when it cannot be read."""
    try:
        image = open_rgb(read_bytes(path, s3, THUMBNAIL_MAX_BYTES))
    except _THUMBNAIL_FAILURES as exc:
        log.warning("report: no thumbnail for %s (%s: %s)", path, type(exc).__name__, exc)
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return image


def mistake_thumbnails(mistakes: pd.DataFrame, s3: S3Options) -> list[Thumbnail]:
    paths = list(mistakes["path"])
    with ThreadPoolExecutor(max_workers=THUMBNAIL_THREADS) as pool:
        images = list(pool.map(lambda p: load_thumbnail(p, s3), paths))
    return [Thumbnail(row.path, f"true: {row.label}\npred: {row.pred_label} ({probability_text(row.pred_prob)})", image)
            for row, image in zip(mistakes.itertuples(), images)]


def probability_text(prob: float) -> str:
    """`87%`; one decimal near the top, so that 0.996 does not read as a certain 100%."""
    return f"{100 * prob:.1f}%" if 0.99 < prob < 1.0 else f"{100 * prob:.0f}%"


def _jpeg_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.{digits}f}%"


def _value_attr(value: Any) -> str:
    """The exact number behind a formatted cell, for readers and tests (`data-value`)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ' data-value=""'
    return f' data-value="{html.escape(repr(float(value)) if isinstance(value, float) else str(value))}"'


def _cell(text: Any, value: Any = None, numeric: bool = False) -> str:
    cls = ' class="num"' if numeric else ""
    attr = _value_attr(value) if numeric else ""
    return f"<td{cls}{attr}>{html.escape(str(text))}</td>"


def per_breed_table(per_class: pd.DataFrame) -> str:
    view = per_class.copy()
    view["_order"] = view["top1_accuracy"].astype(float)
    view = view.sort_values(["_order", "label"], na_position="last")
    head = ("<tr><th>breed</th><th>wnid</th><th>images</th><th>scored</th><th>errors</th><th>top-1</th>"
            "<th>top-5</th><th>mean top-1 probability</th><th>most confused with</th></tr>")
    rows = []
    for row in view.itertuples():
        confused = row.most_confused_with
        confused_text = f"{confused['label']} ({int(confused['count']):,})" if confused else ""
        rows.append(
            f'<tr data-wnid="{html.escape(str(row.wnid or ""))}">'
            + _cell(row.label) + _cell(row.wnid or "")
            + _cell(f"{row.n_images:,}", row.n_images, True) + _cell(f"{row.n_scored:,}", row.n_scored, True)
            + _cell(f"{row.n_errors:,}", row.n_errors, True)
            + _cell(_pct(row.top1_accuracy), row.top1_accuracy, True)
            + _cell(_pct(row.top5_accuracy), row.top5_accuracy, True)
            + _cell(_pct(row.mean_pred_prob), row.mean_pred_prob, True)
            + _cell(confused_text) + "</tr>"
        )
    return f'<table id="per-breed"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def confusions_table(table: pd.DataFrame) -> str:
    if table.empty:
        return '<p class="muted" id="confusions-none">No mistakes among the images with a known truth.</p>'
    head = "<tr><th>true breed</th><th>predicted class</th><th>images</th><th>share of the breed</th></tr>"
    rows = [
        f'<tr data-wnid="{html.escape(str(row.wnid))}" data-pred-wnid="{html.escape(str(row.pred_wnid or ""))}">'
        + _cell(row.label) + _cell(row.pred_label) + _cell(f"{row.count:,}", row.count, True)
        + _cell(_pct(row.share_of_class, 0), row.share_of_class, True) + "</tr>"
        for row in table.itertuples()
    ]
    return f'<table id="confusions"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def summary_table(summary: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                   for name, value in summary_rows(summary))
    return f'<table id="summary" class="summary">{rows}</table>'


def mistakes_grid_html(thumbnails: list[Thumbnail]) -> str:
    if not thumbnails:
        return '<p class="muted">No misclassified images.</p>'
    figures = []
    for thumb in thumbnails:
        if thumb.image is not None:
            picture = (f'<img alt="{html.escape(thumb.path)}" title="{html.escape(thumb.path)}" '
                       f'src="data:image/jpeg;base64,{_jpeg_base64(thumb.image)}">')
        else:
            picture = f'<div class="missing" title="{html.escape(thumb.path)}">image not readable</div>'
        caption = "<br>".join(html.escape(line) for line in thumb.caption.split("\n"))
        figures.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="grid" id="mistakes">{"".join(figures)}</div>'


def _chart_img(path: Path, alt: str) -> str:
    return (f'<img class="chart" data-file="charts/{html.escape(path.name)}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{_png_base64(path)}">')


STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif; margin: 24px auto;
       max-width: 1180px; color: #222; padding: 0 16px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #ddd; }
.muted { color: #666; }
.random-warning { background: #b71c1c; color: #fff; padding: 18px 22px; border-radius: 6px; margin: 16px 0; }
.random-warning .big { font-size: 44px; font-weight: 800; letter-spacing: 1px; line-height: 1.15; }
.random-warning p { font-size: 18px; margin: 8px 0 0; }
.note { background: #fff8e1; border-left: 5px solid #f9a825; padding: 8px 12px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #e5e5e5; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { width: 150px; color: #444; }
table.summary td { word-break: break-all; }
img.chart { max-width: 100%; border: 1px solid #eee; margin: 8px 0; }
.pair { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.pair img.chart { max-width: calc(50% - 8px); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
figure { margin: 0; text-align: center; font-size: 12px; }
figure img, .missing { width: 176px; height: 176px; object-fit: contain; background: #f5f5f5; }
.missing { display: flex; align-items: center; justify-content: center; color: #777; margin: auto; }
figcaption { margin-top: 4px; }
"""


def render_html(data: RunData, chart_paths: dict[str, Path], confusions: pd.DataFrame,
                thumbnails: list[Thumbnail], ece: Optional[float]) -> str:
    summary = data.summary
    random_weights = bool(summary.get("random_weights"))
    title = f"infer-dogs report: {summary.get('model')} on {summary.get('input')}"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>"]
    if random_weights:
        parts.append('<div class="random-warning" id="random-weights"><div class="big">RANDOM WEIGHTS: '
                     'THESE RESULTS ARE MEANINGLESS</div>'
                     f"<p>{html.escape(summary.get('warning') or '')}</p></div>")
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(f'<p class="muted">run {html.escape(str(summary.get("run_id")))} &middot; generated '
                 f'{datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} from {html.escape(data.root)}</p>')
    if data.sampled:
        parts.append(f'<p class="note">This run has {data.predictions_total:,} predictions: the confusions, '
                     f'confidence charts and misclassified images use a seeded sample of {len(data.predictions):,}. '
                     "Per-breed numbers are exact.</p>")
    parts += ["<h2>Summary</h2>", summary_table(summary)]
    parts += ["<h2>Accuracy by breed</h2>",
              '<p class="muted">Top-1 (dark) and top-5 (light) accuracy over each breed\'s scored images; '
              "n is the number of scored images. The table lists the worst breeds first.</p>",
              _chart_img(chart_paths["accuracy_by_breed"], "top-1 accuracy by breed"),
              per_breed_table(data.per_class)]
    parts += ["<h2>Most frequent confusions</h2>",
              _chart_img(chart_paths["confusions"], "most frequent confusions"), confusions_table(confusions)]
    ece_text = "n/a (no image with a known truth)" if ece is None else f"{100 * ece:.1f} percentage points"
    parts += ["<h2>Confidence and calibration</h2>",
              f'<p>Expected calibration error ({RELIABILITY_BINS} bins): <b id="ece">{html.escape(ece_text)}</b>. '
              "A calibrated model's accuracy in each bin equals its mean confidence there (the diagonal).</p>",
              '<div class="pair">', _chart_img(chart_paths["confidence"], "confidence histogram"),
              _chart_img(chart_paths["reliability"], "reliability diagram"), "</div>"]
    parts += [f"<h2>Misclassified images ({len(thumbnails)} shown, most confident first)</h2>",
              mistakes_grid_html(thumbnails)]
    files = ", ".join(f"charts/{p.name}" for p in chart_paths.values())
    parts.append(f'<p class="muted">Charts also saved as PNG files next to this page: {html.escape(files)}.</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(data: RunData, folder: Path, s3: S3Options) -> Path:
    """Write report.html and charts/*.png into the local `folder`; returns the HTML file."""
    random_weights = bool(data.summary.get("random_weights"))
    chart_dir = folder / "charts"
    chart_dir.mkdir(parents=True, exist_ok=True)
    confusions = top_confusions(data.predictions, CONFUSIONS_SHOWN)
    histogram = confidence_bins(data.predictions)
    reliability = confidence_bins(data.predictions, RELIABILITY_BINS)
    ece = expected_calibration_error(reliability)
    thumbnails = mistake_thumbnails(pick_mistakes(data.predictions, MAX_THUMBNAILS), s3)
    chart_paths = {
        "accuracy_by_breed": charts.accuracy_by_breed(data.per_class, chart_dir / CHART_FILES["accuracy_by_breed"],
                                                      random_weights),
        "confusions": charts.confusions(confusions, chart_dir / CHART_FILES["confusions"], random_weights),
        "confidence": charts.confidence_histogram(histogram, chart_dir / CHART_FILES["confidence"], random_weights),
        "reliability": charts.reliability_diagram(reliability, chart_dir / CHART_FILES["reliability"], ece,
                                                  random_weights),
        "mistakes": charts.mistakes_grid([(np.asarray(t.image) if t.image is not None else None, t.caption)
                                          for t in thumbnails], chart_dir / CHART_FILES["mistakes"], random_weights),
    }
    page = folder / "report.html"
    page.write_text(render_html(data, chart_paths, confusions, thumbnails, ece), encoding="utf-8")
    return page


def write_report(data: RunData, s3: S3Options, spark=None) -> str:
    """Build the report into the run directory `data.root`; returns the URI of report.html.

    Local run directories are written in place; others (hdfs://, s3://, dbfs:/) are built in a
    temporary folder and copied through Spark's Hadoop filesystem (needs `spark`)."""
    paths = RunPaths(data.root)
    if is_local_uri(data.root):
        build_report(data, local_path(data.root), s3)
        return paths.report
    if spark is None:
        raise ValueError(f"writing a report to {data.root} needs a Spark session")
    from jobs.outputs import HadoopFiles

    files = HadoopFiles(spark)
    staging = Path(tempfile.mkdtemp(prefix="infer-dogs-report-"))
    try:
        build_report(data, staging, s3)
        for chart in sorted((staging / "charts").glob("*.png")):
            files.upload(str(chart), f"{paths.charts}/{chart.name}")
        files.upload(str(staging / "report.html"), paths.report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths.report


def write_run_report(spark, s3: S3Options, paths: RunPaths, summary: dict[str, Any]) -> Optional[str]:
    """The end of a run: the report from the Parquet just written; returns its URI, None if it failed.

    The run's outputs are complete before this step, so a report that cannot be written does
    not fail the run: the reason is logged, with the command that rebuilds it."""
    from jobs.report_data import read_with_spark

    try:
        return write_report(read_with_spark(spark, paths.root, summary), s3, spark)
    except Exception:  # the outputs are written; a missing report must not turn the run into a failure
        log.exception("report: could not write %s; rebuild it with `infer-dogs report %s`", paths.report, paths.root)
        return None
