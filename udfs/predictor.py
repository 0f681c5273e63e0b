"""The predictor: one object per Python worker that owns the model and scores batches of paths.

`get_predictor` keeps predictors in a module-level cache keyed by model, weights hash, device
and precision, so with `spark.python.worker.reuse=true` a worker builds its model once and
reuses it for every later task and batch. (The cache must live in an importable module: a
function defined in the spark-submit script is pickled by value and would get a new cache on
every task.)

Inside a task, `predict_batches` overlaps the stages: while one model batch is on the model,
the next images (across Arrow batch boundaries) are being fetched and decoded by the worker's
thread pool (Pillow and boto3 release the GIL), never more than a small window ahead, so memory
does not grow with the batch or task size. Only paths come in and only small prediction rows
go out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import torch

from udfs.decode import decode_and_preprocess, normalize_batch
from udfs.errors import describe_failure
from udfs.gpu_decode import EncodedJpeg, decode_batch, probe_jpeg, tensor_transforms
from udfs.model import (autocast_to, exact_fp32_on_cuda, load_model, optimize_graph, resolve_batch_size,
                        resolve_precision)
from udfs.s3_retry import RetryCounts
from udfs.settings import Settings
from udfs.schema import SCORED_SCHEMA
from udfs.storage import read_bytes

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Failure:
    error: str
    error_kind: str


@dataclass
class TaskStats:
    """What one task did, for the run summary and the worker report."""

    images: int = 0
    errors: int = 0
    model_seconds: float = 0.0
    wait_seconds: float = 0.0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    s3_retries: RetryCounts = field(default_factory=RetryCounts)  # this task's image reads


class Prefetcher:
    """Fetch+decode submitted in row order across a stream of Arrow batches, at most `window`
    images ahead of the model: the pipeline stays full, and memory stays bounded by the window,
    not by the Arrow batch size or the number of images in the task."""

    def __init__(self, submit_one, batches: Iterator[pd.DataFrame], window: int):
        self.submit_one = submit_one
        self.batches = iter(batches)
        self.window = window
        self.futures: deque[Future] = deque()
        self.frames: deque[pd.DataFrame] = deque()  # batches whose rows are being submitted or waited for
        self.rows: Iterator = iter(())
        self.exhausted = False

    def _top_up(self) -> None:
        while len(self.futures) < self.window and not self.exhausted:
            row = next(self.rows, None)
            if row is not None:
                self.futures.append(self.submit_one(*row))
                continue
            batch = next(self.batches, None)
            if batch is None:
                self.exhausted = True
                return
            self.frames.append(batch)
            sizes = batch["size_bytes"] if "size_bytes" in batch else [None] * len(batch)
            self.rows = iter([(path, None if pd.isna(size) else int(size)) for path, size in zip(batch["path"], sizes)])

    def next_batch(self) -> Optional[pd.DataFrame]:
        """The next Arrow batch to finish (its rows are already being fetched), or None."""
        self._top_up()
        return self.frames.popleft() if self.frames else None

    def next_result(self) -> Any:
        """The next row's decoded image (or Failure), in row order."""
        future = self.futures.popleft()
        self._top_up()
        return future.result()


class Predictor:
    """Model + device + preprocessing + precision; maps a batch of paths to prediction rows."""

    def __init__(self, settings: Settings, device: torch.device, model: torch.nn.Module):
        self.settings = settings
        self.device = device
        self.prep = settings.model_source.preprocessing
        self.names = settings.model_source.classes
        self.model = model
        self.autocast_dtype = resolve_precision(settings.precision, device)
        self.batch_size = resolve_batch_size(settings.batch_size, device)
        num_classes = len(self.names.labels)
        self.top_k = min(settings.top_k, num_classes)
        self.top_eval = min(max(settings.top_k, 5), num_classes)
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="fetch-decode")
        self.stats = TaskStats()
        if settings.gpu_decode:
            tensor_transforms()  # its import (TorchDynamo) now, with the build, not in the first batch

    # -- one image: the only place a per-image exception becomes an error row -----------------
    @staticmethod
    def guarded(step, *args) -> Any:
        """`step(*args)`, or a Failure row when it raises (one bad image, never a lost batch)."""
        try:
            return step(*args)
        except Exception as exc:  # any failure on one image becomes one error row
            return Failure(*describe_failure(exc))

    def load(self, path: str, size_bytes: Optional[int], retries: RetryCounts) -> torch.Tensor | EncodedJpeg | Failure:
        return self.guarded(self._read_and_decode, path, size_bytes, retries)

    def _read_and_decode(self, path: str, size_bytes: Optional[int],
                         retries: RetryCounts) -> torch.Tensor | EncodedJpeg:
        data = read_bytes(path, self.settings.s3, self.settings.max_image_bytes, size_bytes, retries)
        if self.settings.gpu_decode:
            encoded = probe_jpeg(data)
            if encoded is not None:
                return encoded  # decoded with its model batch, on the device
        return decode_and_preprocess(data, self.prep)

    def decode_encoded(self, images: list) -> list:
        """Replace the batch's EncodedJpegs by device tensors; Pillow for what the device refuses."""
        positions = [i for i, image in enumerate(images) if isinstance(image, EncodedJpeg)]
        if not positions:
            return images
        decoded = decode_batch([images[i] for i in positions], self.device, self.prep)
        out = list(images)
        for i, result in zip(positions, decoded):
            out[i] = result if not isinstance(result, Exception) else self.guarded(
                decode_and_preprocess, images[i].data, self.prep)
        return out

    def submit(self, path: str, size_bytes: Optional[int]) -> Future:
        return self.pool.submit(self.load, path, size_bytes, self.stats.s3_retries)  # counted for the submitting task

    @property
    def window(self) -> int:
        """Images fetched and decoded ahead: the next model batch, plus one per fetch thread."""
        return 2 * self.batch_size + self.settings.decode_threads

    # -- the model ------------------------------------------------------------------------------
    def to_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The batch on the GPU; only uint8 crosses the bus. Host images are stacked straight into
        one pinned buffer and copied in one asynchronous transfer (normalisation follows on the
        device); images already decoded on the device (--gpu-decode) stay there."""
        if not any(image.is_cuda for image in images):
            pinned = torch.empty((len(images), *images[0].shape), dtype=images[0].dtype, pin_memory=True)
            return torch.stack(images, out=pinned).to(self.device, non_blocking=True)
        return torch.stack([image.to(self.device, non_blocking=True) for image in images])

    def infer(self, images: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """Top-`top_eval` probabilities and indices for each image, softmax per row.

        On CPU a short batch is padded with blank images to the model batch size, so that the
        model only ever sees one shape: oneDNN chooses kernels per shape, and the fused graph
        runs unfused on the first calls of a new shape, so an image's probabilities would
        otherwise depend (in the 5th-6th digit) on how many images shared its batch and on what
        its worker ran before. With one shape they are bit for bit the same whatever its
        neighbours, task or worker (measured; the fault tests compare runs exactly). CPU batches
        are small (4-16), so this costs at most a few images per Arrow batch. On CUDA, where
        batches are large and tasks may hold fewer images than one batch, short batches run as
        they are: padding 17 images to 256 would be 15x the work."""
        started = time.perf_counter()
        count = len(images)
        if self.device.type == "cuda":
            batch = self.to_device(images)
        else:
            if count < self.batch_size:
                images = images + [torch.zeros_like(images[0])] * (self.batch_size - count)
            batch = torch.stack(images)
        with torch.inference_mode(), autocast_to(self.device, self.autocast_dtype):
            inputs = normalize_batch(batch, self.prep, torch.float32)
            if self.settings.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            logits = self.model(inputs)
            probs = torch.softmax(logits.float(), dim=1)
            top = torch.topk(probs, self.top_eval, dim=1)
            values, indices = top.values[:count].cpu().numpy(), top.indices[:count].cpu().numpy()
        self.stats.model_seconds += time.perf_counter() - started
        return values, indices

    # -- batches --------------------------------------------------------------------------------
    def finish(self, batch: pd.DataFrame, prefetcher: Prefetcher) -> pd.DataFrame:
        """Wait for the batch's decoded images, run them through the model, build its rows."""
        results: list[tuple[np.ndarray, np.ndarray] | Failure | None] = [None] * len(batch)
        pending_rows: list[int] = []
        pending_images: list[torch.Tensor] = []

        def flush() -> None:
            ready = []
            for row, image in zip(pending_rows, self.decode_encoded(pending_images)):
                if isinstance(image, Failure):
                    results[row] = image
                else:
                    ready.append((row, image))
            if ready:
                values, indices = self.infer([image for _, image in ready])
                for offset, (row, _) in enumerate(ready):
                    results[row] = (values[offset], indices[offset])
            pending_rows.clear()
            pending_images.clear()

        for row in range(len(batch)):
            waited = time.perf_counter()
            loaded = prefetcher.next_result()
            self.stats.wait_seconds += time.perf_counter() - waited
            if isinstance(loaded, Failure):
                results[row] = loaded
                continue
            pending_rows.append(row)
            pending_images.append(loaded)
            if len(pending_images) == self.batch_size:
                flush()
        if pending_images:
            flush()
        return self.rows(batch, results)

    def rows(self, batch: pd.DataFrame, results: list) -> pd.DataFrame:
        columns: dict[str, list] = {name: [] for name in SCORED_SCHEMA.fieldNames()}
        for (_, image), result in zip(batch.iterrows(), results):
            wnid = image["wnid"] if isinstance(image["wnid"], str) else None
            label = image["label"] if isinstance(image["label"], str) else None
            truth = self.names.truth_index(wnid, label)  # None: no truth among the model's classes
            if truth is not None:  # the true class as the model's class list names it
                wnid, label = self.names.wnid(truth) or wnid, self.names.label(truth)
            columns["image_id"].append(image["image_id"])
            columns["path"].append(image["path"])
            columns["wnid"].append(wnid)
            columns["label"].append(label)
            self.stats.images += 1
            if isinstance(result, Failure):
                self.stats.errors += 1
                self.stats.errors_by_kind[result.error_kind] = self.stats.errors_by_kind.get(result.error_kind, 0) + 1
                for name in ("pred_index", "pred_wnid", "pred_label", "pred_prob", "top_k_indices",
                             "top_k_probs", "correct", "top5_correct"):
                    columns[name].append(None)
                columns["error"].append(result.error)
                columns["error_kind"].append(result.error_kind)
                continue
            values, indices = result
            best = int(indices[0])
            columns["pred_index"].append(best)
            columns["pred_wnid"].append(self.names.wnid(best))
            columns["pred_label"].append(self.names.label(best))
            columns["pred_prob"].append(float(values[0]))
            columns["top_k_indices"].append([int(i) for i in indices[: self.top_k]])
            columns["top_k_probs"].append([float(v) for v in values[: self.top_k]])
            columns["correct"].append(best == truth if truth is not None else None)
            columns["top5_correct"].append(truth in {int(i) for i in indices[:5]} if truth is not None else None)
            columns["error"].append(None)
            columns["error_kind"].append(None)
        frame = pd.DataFrame(columns)
        return frame.astype(
            {"pred_index": "Int32", "pred_prob": "Float32", "correct": "boolean", "top5_correct": "boolean"}
        )

    def predict_batches(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Score a stream of Arrow batches, fetching/decoding ahead of the model."""
        self.stats = TaskStats()
        prefetcher = Prefetcher(self.submit, batches, self.window)
        while (batch := prefetcher.next_batch()) is not None:
            yield self.finish(batch, prefetcher)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.concat(list(self.predict_batches(iter([batch]))), ignore_index=True)


_models: dict[tuple, torch.nn.Module] = {}
_predictors: dict[tuple, Predictor] = {}
_lock = threading.Lock()
model_builds_in_this_process = 0


def cached_model(settings: Settings, device: torch.device, weights_file: Path) -> tuple[torch.nn.Module, bool]:
    """This worker's model for (architecture, weights hash, device, layout); True if built now."""
    global model_builds_in_this_process
    autocast_dtype = resolve_precision(settings.precision, device)
    batch_size = resolve_batch_size(settings.batch_size, device)
    key = (settings.model, settings.weights_source.sha256, str(device), settings.channels_last, settings.graph,
           batch_size, autocast_dtype)
    with _lock:
        model = _models.get(key)
        if model is not None:
            return model, False
        log.info("building %s on %s from %s", settings.model, device, settings.weights_source.description)
        exact_fp32_on_cuda(device, autocast_dtype)
        model = load_model(settings.model_source, weights_file, device, settings.channels_last)
        crop_size = settings.model_source.preprocessing.crop_size
        model = optimize_graph(model, settings.graph, device, batch_size, crop_size, settings.channels_last,
                               autocast_dtype)
        _models[key] = model
        model_builds_in_this_process += 1
        return model, True


def get_predictor(settings: Settings, device: torch.device, weights_file: Path) -> tuple[Predictor, bool]:
    """This worker's predictor for these settings and device; True if its model was built now."""
    model, built = cached_model(settings, device, weights_file)
    key = (settings, str(device))
    with _lock:
        predictor = _predictors.get(key)
        if predictor is None:
            predictor = _predictors[key] = Predictor(settings, device, model)
    return predictor, built
