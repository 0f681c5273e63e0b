"""The report's PNG charts, drawn with matplotlib's object API (no pyplot state, no display).

Each function takes a small table from `jobs.report_data`, writes one PNG and returns its path.
When the run used random weights every chart carries a red line saying so, so that a chart
copied out of the report still tells the truth about itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

RANDOM_NOTE = "RANDOM WEIGHTS: these numbers are meaningless"
DPI = 100
GREEN, RED, GREY, BLUE = "#2e7d32", "#c62828", "#9e9e9e", "#1565c0"


def _shorten(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure


def _save(figure: Figure, path: Path, random_weights: bool) -> Path:
    if random_weights:
        figure.suptitle(RANDOM_NOTE, color=RED, fontsize=13, fontweight="bold")
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _empty(path: Path, message: str, random_weights: bool) -> Path:
    figure = _figure(8, 2)
    ax = figure.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    return _save(figure, path, random_weights)


def accuracy_by_breed(per_class: pd.DataFrame, path: Path, random_weights: bool = False) -> Path:
    """Top-1 accuracy per true class, best first, with top-5 as a lighter bar and image counts."""
    known = per_class[per_class["top1_accuracy"].notna()]
    if known.empty:
        return _empty(path, "No class has a known truth: accuracy cannot be computed.", random_weights)
    table = known.sort_values(["top1_accuracy", "top5_accuracy", "label"], ascending=[True, True, False])
    n = len(table)
    figure = _figure(10, 1.4 + 0.26 * n)
    ax = figure.subplots()
    y = np.arange(n)
    ax.barh(y, 100 * table["top5_accuracy"].astype(float).fillna(0), color="#bbdefb", label="top-5", height=0.75)
    ax.barh(y, 100 * table["top1_accuracy"].astype(float), color=BLUE, label="top-1", height=0.45)
    ax.set_yticks(y, [f"{label}  (n={count})" for label, count in zip(table["label"], table["n_scored"])],
                  fontsize=9)
    for row, value in zip(y, 100 * table["top1_accuracy"].astype(float)):
        inside = value > 88  # no room to the right: white text at the bar's end
        ax.text(value - 1 if inside else value + 1, row, f"{value:.0f}%", va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black")
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%) over the class's scored images")
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    hidden = len(per_class) - n
    title = "Top-1 accuracy by breed (best at the top)"
    if hidden:
        title += f"; {hidden} class(es) without a known truth not shown"
    ax.set_title(title, fontsize=11)
    return _save(figure, path, random_weights)


def confusions(table: pd.DataFrame, path: Path, random_weights: bool = False) -> Path:
    """The most frequent mistakes: true breed -> predicted class, with counts."""
    if table.empty:
        return _empty(path, "No mistakes among the images with a known truth.", random_weights)
    rows = table.iloc[::-1]
    n = len(rows)
    figure = _figure(10, 1.2 + 0.32 * n)
    ax = figure.subplots()
    y = np.arange(n)
    ax.barh(y, rows["count"], color=RED, height=0.6)
    ax.set_yticks(y, [f"{t}  \u2192  {p}" for t, p in zip(rows["label"], rows["pred_label"])], fontsize=9)
    for row, count, share in zip(y, rows["count"], rows["share_of_class"]):
        ax.text(count, row, f" {count} ({100 * share:.0f}% of class)", va="center", fontsize=8)
    ax.set_xlim(0, rows["count"].max() * 1.35)
    ax.set_xlabel("images")
    ax.set_title("Most frequent confusions (true breed \u2192 predicted class)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path, random_weights)


def confidence_histogram(bins: pd.DataFrame, path: Path, random_weights: bool = False) -> Path:
    """How confident the model was (top-1 probability), split into right, wrong and no truth."""
    if int(bins["n"].sum()) == 0:
        return _empty(path, "No image was scored.", random_weights)
    figure = _figure(6.5, 6)  # the reliability diagram's size: the report shows them side by side
    ax = figure.subplots()
    left = bins["bin_low"].to_numpy() * 100
    width = (bins["bin_high"] - bins["bin_low"]).to_numpy() * 100
    bottom = np.zeros(len(bins))
    for column, color, name in (("n_correct", GREEN, "right"), ("n_wrong", RED, "wrong"),
                                ("n_no_truth", GREY, "no known truth")):
        values = bins[column].to_numpy()
        if values.sum():
            ax.bar(left, values, width=width, bottom=bottom, align="edge", color=color, label=name,
                   edgecolor="white", linewidth=0.5)
            bottom = bottom + values
    ax.set_xlim(0, 100)
    ax.set_xlabel("top-1 probability (%)")
    ax.set_ylabel("images")
    ax.set_title("Confidence of the top-1 prediction", fontsize=11)
    ax.legend(fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(figure, path, random_weights)


def reliability_diagram(bins: pd.DataFrame, path: Path, ece: Optional[float],
                        random_weights: bool = False) -> Path:
    """Accuracy against mean confidence per bin; the diagonal is perfect calibration."""
    known = bins[(bins["n_correct"] + bins["n_wrong"]) > 0]
    if known.empty:
        return _empty(path, "No scored image has a known truth: calibration cannot be shown.", random_weights)
    figure = _figure(6.5, 6)
    ax = figure.subplots()
    left = known["bin_low"].to_numpy() * 100
    width = (known["bin_high"] - known["bin_low"]).to_numpy() * 100
    accuracy = known["accuracy"].astype(float).to_numpy() * 100
    confidence = known["mean_confidence"].astype(float).to_numpy() * 100
    ax.bar(left, accuracy, width=width, align="edge", color=BLUE, edgecolor="white", label="accuracy")
    ax.bar(left, confidence - accuracy, width=width, bottom=accuracy, align="edge", color=RED, alpha=0.25,
           edgecolor=RED, hatch="//", label="gap to mean confidence")
    ax.plot([0, 100], [0, 100], linestyle="--", color="#333333", label="perfect calibration")
    for x, w, acc, n in zip(left, width, accuracy, known["n_correct"] + known["n_wrong"]):
        ax.text(x + w / 2, min(acc + 1.5, 96), f"n={n}", ha="center", fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("top-1 probability (%)")
    ax.set_ylabel("accuracy (%)")
    title = "Reliability diagram"
    if ece is not None:
        title += f" (expected calibration error {100 * ece:.1f} points)"
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_aspect("equal")
    return _save(figure, path, random_weights)


def _caption_font(size: int):
    """matplotlib's own DejaVu Sans (always installed with it), for the Pillow-drawn grid."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _fit(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def mistakes_grid(thumbnails: Sequence[tuple[Optional[np.ndarray], str]], path: Path,
                  random_weights: bool = False, columns: int = 6, cell: int = 176) -> Path:
    """Misclassified images, each with its caption (true and predicted label).

    Drawn with Pillow, not matplotlib: pasting two dozen thumbnails needs no axes, and
    matplotlib's layout of 24+ image axes took 0.9 s of every run's report (this takes ~0.05)."""
    from PIL import Image, ImageDraw

    if not thumbnails:
        return _empty(path, "No misclassified images.", random_weights)
    font, banner_font = _caption_font(11), _caption_font(16)
    line, pad = 14, 6
    banner = 30 if random_weights else 0
    rows = -(-len(thumbnails) // columns)
    cell_h = cell + 2 * line + 2 * pad
    canvas = Image.new("RGB", (columns * (cell + pad) + pad, banner + rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if random_weights:
        draw.text((canvas.width // 2, banner // 2 + 2), RANDOM_NOTE, fill=RED, font=banner_font, anchor="mm")
    for i, (pixels, caption) in enumerate(thumbnails):
        x = pad + (i % columns) * (cell + pad)
        y = banner + pad + (i // columns) * cell_h
        if pixels is not None:
            picture = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
            picture.thumbnail((cell, cell))
            canvas.paste(picture, (x + (cell - picture.width) // 2, y + cell - picture.height))  # on its caption
        else:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=GREY)
            draw.text((x + cell // 2, y + cell // 2), "image not readable", fill="#555555", font=font, anchor="mm")
        for k, text in enumerate(caption.split("\n")[:2]):
            draw.text((x + cell // 2, y + cell + pad // 2 + k * line), _fit(text, font, cell), fill="black",
                      font=font, anchor="ma")
    canvas.save(path, format="PNG")
    return path


def accuracy_differences(table: pd.DataFrame, path: Path, name_a: str, name_b: str,
                         random_note: Optional[str] = None) -> Path:
    """Per-breed top-1 accuracy of run B minus run A (compare)."""
    known = table[table["delta_top1"].notna()].sort_values(["delta_top1", "label"], ascending=[True, False])
    if known.empty:
        figure = _figure(8, 2)
        ax = figure.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "No class has a known truth in both runs.", ha="center", va="center")
    else:
        n = len(known)
        figure = _figure(10, 1.6 + 0.26 * n)
        ax = figure.subplots()
        y = np.arange(n)
        delta = 100 * known["delta_top1"].astype(float).to_numpy()
        ax.barh(y, delta, color=[GREEN if d > 0 else RED if d < 0 else GREY for d in delta], height=0.6)
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_yticks(y, [f"{label}  (n={a}/{b})" for label, a, b in
                          zip(known["label"], known["n_scored_a"], known["n_scored_b"])], fontsize=9)
        limit = max(5.0, float(np.abs(delta).max()) * 1.15)
        ax.set_xlim(-limit, limit)
        ax.set_xlabel(f"top-1 accuracy of B minus A (percentage points)\nA = {_shorten(name_a)}\n"
                      f"B = {_shorten(name_b)}", fontsize=9)
        ax.set_title("Per-breed top-1 accuracy difference (B - A)", fontsize=11)
        ax.grid(axis="x", alpha=0.3)
    if random_note:
        figure.suptitle(random_note, color=RED, fontsize=12, fontweight="bold")
    figure.savefig(path, format="png", dpi=DPI)
    return path
