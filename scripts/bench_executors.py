"""Benchmark the executor side of infer-dogs without Spark: for a machine with a GPU and no Java.

    python scripts/bench_executors.py --images ../shared/data/stanford_dogs_sample --copies 100

The lent GPU machine has CUDA and PyTorch but no Java, so spark-submit cannot run there and
`scripts/bench.py` cannot time the job. This script measures what a GPU executor runs, in the
processes Spark would run it in, on the same images and weights, in one run:
1. check (`--check PRECISION[:gpu-decode][:GRAPH]`, default fp32, fp16, bf16, fp16:gpu-decode):
   the predictor's rows on the device against the plain torchvision reference on the CPU
   (tests/reference.py), image by image: top-1 agreement and the largest |pred_prob - reference|;
2. model ceiling: the bare forward pass on ready tensors, precision x batch size (bench.py's loop);
3. decode ceiling: read + decode + preprocess with Pillow, one process per core (bench.py's);
4. the executor path, for each `--config WORKERS:DECODE_THREADS:BATCH:PRECISION[:gpu-decode]`:
   WORKERS processes, each doing what a Spark Python worker does in the scoring stage (the cached
   predictor of udfs.predictor, fed pandas batches of `--arrow-batch-size` paths, task after task
   from one queue of WORKERS x --tasks-per-slot partitions of the shuffled listing); timed from
   the moment every worker has built its model to the last row (steady), and from process start
   (with Python start, torch import, CUDA context and model build, which Spark pays once per
   Python worker);
5. ratio: executor path / min(model ceiling, decode ceiling), the combined ceiling when the model
   runs on a GPU (bench.py's combined_ceiling).
`--stages check` or `--stages executors` (ceilings and executor path) runs one part only.
Left out, by construction: the JVM, Arrow serialisation of paths and rows, Parquet writing and
the driver (bench.py measures the whole job on CPU). Prints a table; writes JSON under --out after
every stage, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from scripts.bench import (_forward_loop, build_workload, combined_ceiling, decode_ceiling,  # noqa: E402
                           table_lines)
from udfs.labels import truth_from_folder  # noqa: E402
from udfs.model import sha256_of  # noqa: E402
from udfs.model_source import resolve_model_source  # noqa: E402
from udfs.settings import Settings, WeightsSource  # noqa: E402


@dataclass(frozen=True)
class ExecutorConfig:
    workers: int
    decode_threads: int
    batch: int
    precision: str
    gpu_decode: bool = False

    @classmethod
    def parse(cls, text: str) -> "ExecutorConfig":
        parts = text.split(":")
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3], len(parts) > 4 and parts[4] == "gpu-decode")

    def __str__(self) -> str:
        return (f"{self.workers} workers x {self.decode_threads} decode threads, batch {self.batch}, {self.precision}"
                + (", gpu-decode" if self.gpu_decode else ""))


@functools.lru_cache(maxsize=None)
def weights_source(weights: Path) -> WeightsSource:
    """Hashed once per run (ResNet50's file is ~100 MB), not once per check and configuration."""
    return WeightsSource("file", f"bench weights {weights.name}", sha256_of(weights), weights.name)


def settings_for(config: ExecutorConfig, model: str, weights: Path, arrow_batch_size: int,
                 graph: str = "auto") -> Settings:
    source = weights_source(weights)
    return Settings(input="bench", output="bench", model=model, batch_size=config.batch,
                    arrow_batch_size=arrow_batch_size, precision=config.precision, gpu_decode=config.gpu_decode,
                    decode_threads=config.decode_threads, graph=graph, weights_source=source,
                    model_source=resolve_model_source(model))


def listing(files: list[Path]) -> pd.DataFrame:
    """The columns the scoring UDF receives from the driver's listing."""
    truths = [truth_from_folder(f.parent.name) for f in files]
    return pd.DataFrame({"image_id": [str(i) for i in range(len(files))], "path": [str(f) for f in files],
                         "wnid": [t[0] for t in truths], "label": [t[1] for t in truths],
                         "size_bytes": [f.stat().st_size for f in files]})


# ---------------------------------------------------------------- 1. check -------------------
def parse_check(text: str) -> tuple[str, bool, str]:
    """`PRECISION[:gpu-decode][:GRAPH]` -> (precision, gpu_decode, graph), e.g. fp16:compile."""
    precision, *flags = text.split(":")
    graphs = [flag for flag in flags if flag != "gpu-decode"]
    return precision, "gpu-decode" in flags, graphs[0] if graphs else "auto"


def check_device_rows(model: str, weights: Path, files: list[Path], device: torch.device,
                      variants: list[tuple[str, bool, str]]) -> list[dict[str, Any]]:
    from tests.reference import model_from_file, reference_probabilities
    from udfs.predictor import get_predictor

    reference = reference_probabilities(model_from_file(model, weights), model, files)
    frame = listing(files)
    out = []
    for precision, gpu_decode, graph in variants:
        settings = settings_for(ExecutorConfig(1, 4, 64, precision, gpu_decode), model, weights, 256, graph)
        started = time.perf_counter()
        predictor, _ = get_predictor(settings, device, weights)
        rows = pd.concat(list(predictor.predict_batches(iter([frame]))), ignore_index=True)
        seconds = time.perf_counter() - started
        ref = torch.stack([reference[p] for p in rows["path"]])
        same = (torch.tensor(rows["pred_index"].astype("int64").to_numpy()) == ref.argmax(1))
        diff = (torch.tensor(rows["pred_prob"].astype("float32").to_numpy()) - ref.max(1).values).abs()
        out.append({"precision": precision, "gpu_decode": gpu_decode, "graph": graph, "images": len(rows),
                    "seconds_with_build": seconds,
                    "errors": int(rows["error"].notna().sum()), "top1_agreement": float(same.float().mean()),
                    "max_abs_prob_diff": float(diff.max()),
                    "largest_diffs": {Path(path).name: round(float(d), 5)  # where to look first
                                      for d, path in sorted(zip(diff.tolist(), rows["path"]), reverse=True)[:5]}})
    return out


# ---------------------------------------------------------------- 2. model ceiling -----------
def gpu_model_ceiling(model: str, weights: Path, seconds: float, log, device: str = "cuda",
                      precisions: tuple[str, ...] = ("fp16", "bf16", "fp32")) -> dict[str, Any]:
    """bench.py's forward loop in this process (a CUDA context per trial process costs more than
    the trial), precision x batch size, channels_last, eager."""
    trials = []
    for precision in precisions:
        for batch in (64, 128, 256):
            results: queue.Queue = queue.Queue()
            _forward_loop(model, str(weights), device, torch.get_num_threads(), batch, True, precision, "eager",
                          seconds, None, results)
            rate = results.get()
            trials.append({"precision": precision, "batch": batch, "images_per_s": rate})
            log(f"  model {precision} batch {batch}: {rate:.1f} images/s")
    return {"best": max(trials, key=lambda t: t["images_per_s"]), "trials": trials}


# ---------------------------------------------------------------- 4. executor path -----------
def _executor_worker(settings: Settings, weights: str, tasks, ready, go, results) -> None:
    """One Spark Python worker's scoring stage: build the cached predictor, then score tasks."""
    from udfs.model import task_device
    from udfs.predictor import get_predictor

    torch.set_num_threads(1)  # PySpark sets OMP_NUM_THREADS to spark.task.cpus (1) for its workers
    device = task_device([])
    predictor, _ = get_predictor(settings, device, Path(weights))
    ready.put(str(device))
    go.wait()
    image_ids: list[str] = []
    errors = 0
    model_seconds = wait_seconds = 0.0
    while (task := tasks.get()) is not None:
        batches = (task.iloc[i:i + settings.arrow_batch_size] for i in range(0, len(task), settings.arrow_batch_size))
        for rows in predictor.predict_batches(batches):
            image_ids.extend(rows["image_id"])
            errors += int(rows["error"].notna().sum())
        model_seconds += predictor.stats.model_seconds
        wait_seconds += predictor.stats.wait_seconds
    results.put({"image_ids": image_ids, "errors": errors, "finished": time.perf_counter(), "model_s": model_seconds,
                 "wait_s": wait_seconds, "device": str(device)})


def executor_path(config: ExecutorConfig, model: str, weights: Path, frame: pd.DataFrame, tasks_per_slot: int,
                  arrow_batch_size: int) -> dict[str, Any]:
    context = mp.get_context("spawn")
    settings = settings_for(config, model, weights, arrow_batch_size)
    shuffled = frame.sample(frac=1.0, random_state=0)  # the job spreads rows over partitions: no skew
    partitions = config.workers * tasks_per_slot
    tasks, ready, results, go = context.Queue(), context.Queue(), context.Queue(), context.Event()
    for index in range(partitions):
        tasks.put(shuffled.iloc[index::partitions])
    for _ in range(config.workers):
        tasks.put(None)
    started = time.perf_counter()
    workers = [context.Process(target=_executor_worker, args=(settings, str(weights), tasks, ready, go, results))
               for _ in range(config.workers)]
    for worker in workers:
        worker.start()
    devices = {ready.get(timeout=600) for _ in workers}
    released = time.perf_counter()
    go.set()
    reports = [results.get(timeout=900) for _ in workers]
    for worker in workers:
        worker.join()
    images = sum(len(r["image_ids"]) for r in reports)
    finished = max(r["finished"] for r in reports)
    return {"config": str(config), "workers": config.workers, "decode_threads": config.decode_threads,
            "batch": config.batch, "precision": config.precision, "gpu_decode": config.gpu_decode,
            "partitions": partitions, "images": images, "errors": sum(r["errors"] for r in reports),
            "distinct_images": len({i for r in reports for i in r["image_ids"]}),
            "steady_images_per_s": images / (finished - released),
            "from_start_images_per_s": images / (finished - started),
            "start_and_build_s": released - started, "devices": sorted(devices),
            "model_s_per_worker": max(r["model_s"] for r in reports),
            "wait_s_per_worker": max(r["wait_s"] for r in reports)}


# ---------------------------------------------------------------- main -----------------------
DEFAULT_CONFIGS = ["4:4:64:fp16", "4:4:256:fp16", "8:2:128:fp16", "16:1:64:fp16", "4:4:128:fp16:gpu-decode"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="a Stanford-Dogs-style tree (or its Images/ folder)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--copies", type=int, default=100, help="repeat the tree under this many prefixes")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=2.0, help="time per model-ceiling trial")
    parser.add_argument("--config", dest="configs", action="append",
                        help="WORKERS:DECODE_THREADS:BATCH:PRECISION[:gpu-decode] (repeatable; default: "
                             + ", ".join(DEFAULT_CONFIGS) + ")")
    parser.add_argument("--check", dest="checks", action="append",
                        help="PRECISION[:gpu-decode][:GRAPH] to check against the CPU reference (repeatable; "
                             "default: fp32, fp16, bf16, fp16:gpu-decode), e.g. fp16:compile")
    parser.add_argument("--stages", default="check,executors",
                        help="comma-separated: check, executors (the ceilings and the executor path)")
    parser.add_argument("--ceiling-precision", dest="ceiling_precisions", action="append",
                        choices=("fp16", "bf16", "fp32"), help="model-ceiling precisions (repeatable; default: all)")
    parser.add_argument("--tasks-per-slot", type=int, default=3, help="the job's default")
    parser.add_argument("--arrow-batch-size", type=int, default=256, help="the job's default")
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke run of this script on a machine without a GPU (figures mean nothing)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_executors.py measures the GPU executor path: no CUDA device here", file=sys.stderr)
        return 2

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-executors-{args.model}-{args.device}"

    def log(message: str) -> None:
        print(message, flush=True)

    work = Path(tempfile.mkdtemp(prefix="infer-dogs-bench-executors-"))
    files = build_workload(Path(args.images), args.copies, work / "data")
    originals = files[: len(files) // args.copies]
    weights = work / f"{args.model}-bench.pt"
    from tests.reference import make_spread_weights  # the tests' and bench.py's weights recipe

    make_spread_weights(args.model, 0, originals, weights)
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    result: dict[str, Any] = {
        "model": args.model, "images": len(files), "cores": args.cores, "device": args.device,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda"
                    else "no GPU"},
        "left_out": "JVM, Arrow serialisation, Parquet writing, driver (no Java on this machine)"}

    def save() -> None:
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    log(f"workload: {len(files)} images ({args.copies} copies), {args.model}, {args.cores} cores, "
        f"{result['machine']['gpu']}, torch {torch.__version__}")
    stages = set(args.stages.split(","))
    if "check" in stages:
        log("check: device rows against the CPU reference ...")
        checks = [parse_check(text) for text in args.checks or ["fp32", "fp16", "bf16", "fp16:gpu-decode"]]
        result["check"] = check_device_rows(args.model, weights, originals, device, checks)
        for row in result["check"]:
            log(f"  {row}")
        save()
    if "executors" in stages:
        measure_executors(args, result, files, weights, log, save)
    table = format_table(result)
    print(table)
    stem.with_suffix(".txt").write_text(table + "\n")
    return 0


def measure_executors(args, result: dict[str, Any], files: list[Path], weights: Path, log, save) -> None:
    """Model and decode ceilings, then the executor path for each --config."""
    log("model ceiling ...")
    result["model_ceiling"] = gpu_model_ceiling(args.model, weights, args.seconds, log, args.device,
                                                tuple(args.ceiling_precisions or ("fp16", "bf16", "fp32")))
    save()
    log("decode ceiling ...")
    result["decode_ceiling"] = decode_ceiling(args.model, files, args.cores)
    log(f"  {result['decode_ceiling']['images_per_s']:.1f} images/s")
    fp16 = max((t for t in result["model_ceiling"]["trials"] if t["precision"] == "fp16"),
               key=lambda t: t["images_per_s"])
    result["combined_ceiling_fp16_images_per_s"] = combined_ceiling(
        fp16["images_per_s"], result["decode_ceiling"]["images_per_s"], "cuda")
    save()
    frame = listing(files)
    result["executor_path"] = []
    for text in args.configs or DEFAULT_CONFIGS:
        config = ExecutorConfig.parse(text)
        log(f"executor path: {config} ...")
        run = executor_path(config, args.model, weights, frame, args.tasks_per_slot, args.arrow_batch_size)
        model_rate = max(t["images_per_s"] for t in result["model_ceiling"]["trials"]
                         if t["precision"] == config.precision)
        run["vs_combined_ceiling"] = run["steady_images_per_s"] / combined_ceiling(
            model_rate, result["decode_ceiling"]["images_per_s"], "cuda")
        log(f"  steady {run['steady_images_per_s']:.1f} images/s ({run['vs_combined_ceiling']:.2f} x combined), "
            f"from start {run['from_start_images_per_s']:.1f}, start+build {run['start_and_build_s']:.1f} s, "
            f"errors {run['errors']}")
        result["executor_path"].append(run)
        save()


def format_table(result: dict[str, Any]) -> str:
    rows = []
    if "model_ceiling" in result:
        best = result["model_ceiling"]["best"]
        rows += [("model ceiling", f"{best['images_per_s']:.1f} images/s",
                  f"batch {best['batch']}, {best['precision']}, channels_last, eager"),
                 ("decode ceiling", f"{result['decode_ceiling']['images_per_s']:.1f} images/s",
                  f"{result['decode_ceiling']['processes']} processes"),
                 ("combined ceiling, fp16", f"{result['combined_ceiling_fp16_images_per_s']:.1f} images/s",
                  "min(best fp16 model, decode)")]
    for check in result.get("check", []):
        graph = f" {check['graph']}" if check["graph"] != "auto" else ""
        rows.append((f"check {check['precision']}{' gpu-decode' if check['gpu_decode'] else ''}{graph}",
                     f"{100 * check['top1_agreement']:.1f} %",
                     f"top-1 as the CPU reference on {check['images']} images; max |prob diff| "
                     f"{check['max_abs_prob_diff']:.2e}; {check['errors']} errors"))
    for run in result.get("executor_path", []):
        rows.append((f"executor {run['config']}", f"{run['steady_images_per_s']:.1f} images/s",
                     f"{run['vs_combined_ceiling']:.2f} x combined; {run['from_start_images_per_s']:.1f} from "
                     f"process start ({run['start_and_build_s']:.1f} s to start the workers and build the models)"))
    header = (f"infer-dogs executor bench: {result['model']}, {result['images']} images, {result['cores']} cores, "
              f"{result['machine']['gpu']} (no Spark: {result['left_out']})")
    return table_lines(header, rows, 17)


if __name__ == "__main__":
    sys.exit(main())
