"""Benchmark infer-dogs against its ceilings and three baselines, on one machine, in one run.

    .venv/bin/python scripts/bench.py --images ../shared/data/stanford_dogs_sample --model mobilenet_v3_small --copies 17
    .venv/bin/python scripts/bench.py --images ../shared/data/stanford_dogs_sample --model resnet50 --copies 7 --baselines

What it measures, on the same images (the tree repeated under `--copies` prefixes) and weights:
1. model ceiling: images/s of the bare forward pass on ready tensors, best configuration found
   (CPU: every processes x threads split of the cores, batch sizes, channels_last on/off;
   GPU: precision x batch size);
2. decode ceiling: images/s of read + decode + preprocess alone, one process per core;
3. the job (spark-submit, local[cores]) with its own defaults, as a user runs it (its model batch:
   8 on CPU, 256 on CUDA; the ceiling's best batch is a property of the bare model, and in the
   job bigger batches cost more than they gain: mobilenet_v3_small ran 246-268 images/s at 8,
   223-229 at 16 and 190-201 at 32 on 2 cores), from the local folder and from a loopback S3 endpoint
   (with that endpoint's read ceiling: the bytes alone, fetched as the executors fetch them):
   inference-stage images/s (first scoring task start to last task end, from summary.json) and
   whole-process wall time; right after the local job, the model ceiling (its best configuration)
   and the decode ceiling again, so that the job's ratio is bracketed by ceilings taken before
   and after it and a machine that drifted during the run shows as such;
4. baselines, whole-process wall time (scripts/bench_baselines.py, each as published): the Dask
   tutorial (per-image delayed tasks, batches of 80, model rebuilt and reloaded per batch, no
   normalisation, 250 px crop), the Databricks reference notebook pattern (binaryFile DataFrame,
   iterator pandas UDF, broadcast state dict, model built per task, torch DataLoader of 64) and
   Spark's own `pyspark.ml.functions.predict_batch_udf` (preprocessed tensors as array columns,
   model built once per Python worker, batches of 64), with the job run again after them, so
   that the whole-process ratios are bracketed in time as well;
5. ratios: job / combined ceiling, where combined = 1 / (1/model + 1/decode) on CPU (both stages
   share the cores) and min(model, decode) when the model runs on a GPU; for the local job also
   against the ceilings measured after it; for the S3 job also against min(combined, read).
Prints a table and writes JSON under --out. Weights are seeded random (the same file for all)
with the last layer rescaled as the tests do (tests/reference.py), so that predictions are not
near-uniform and the bf16-vs-fp32 agreement compares real decisions; speed does not depend on
the values, and accuracy is not reported.

`--s3-fault-rate 0.35`: after the loopback S3 job, the same job through tests/fault_proxy.py in
front of that endpoint, clean, then with that share of requests failing (500, 503 SlowDown,
reset, body cut short, each drawn independently), then clean again: images scored of those
listed, the retries the job's summary counts, and the faulty run's wall time against the clean
runs' through the same proxy (the proxy's own cost is in both). These three run with
`--no-report`: the report's thumbnail reads would meet faults that the summary does not count.

`--precision bf16` (CPU): the model ceiling and the job in bf16 (autocast, traced into the
TorchScript graph), and the job again in fp32 in the same run, with the top-1 agreement of the
two; the baselines stay fp32, as published.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd
import torch

PROJECT = Path(__file__).resolve().parents[1]

from udfs.decode import Preprocessing, decode_and_preprocess, normalize_batch
from udfs.model import (autocast_to, cpu_runs_bf16_natively, exact_fp32_on_cuda, load_model, optimize_graph,
                        resolve_batch_size, resolve_precision)
from udfs.model_source import resolve_model_source
from udfs.storage import read_bytes
from udfs.settings import S3Options

BASELINES = {"tutorial": "tutorial", "databricks": "databricks",  # scripts/bench_baselines.py, in the table as
             "predict_batch_udf": "spark predict_batch_udf"}       # "<this> whole process"
BENCH_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}


# ---------------------------------------------------------------- workload -------------------
def build_workload(images: Path, copies: int, target: Path) -> list[Path]:
    """`target/copyNN/<breed>/<file>` symlinks to the original photos, `copies` times."""
    source = images / "Images" if (images / "Images").is_dir() else images
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out = []
    for copy in range(copies):
        for file in files:
            link = target / f"copy{copy:02d}" / file.parent.name / file.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(file.resolve())
            out.append(link)
    return out


# ---------------------------------------------------------------- model ceiling --------------
def _forward_loop(model_name: str, weights: str, device: str, threads: int, batch: int, channels_last: bool,
                  precision: str, graph: str, seconds: float, barrier, results) -> None:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    source = resolve_model_source(model_name)
    prep = source.preprocessing
    size = prep.crop_size[0]
    dtype = resolve_precision(precision, dev)
    exact_fp32_on_cuda(dev, dtype)
    model = optimize_graph(load_model(source, Path(weights), dev, channels_last), graph, dev, batch, prep.crop_size,
                           channels_last, dtype)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)

    def step() -> None:
        x = normalize_batch(images.to(dev, non_blocking=True), prep, torch.float32)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_to(dev, dtype):
            model(x).float().softmax(1).topk(5)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        step()
    if barrier is not None:
        barrier.wait()
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    results.put(done / (time.perf_counter() - started))


def measure_forward(model_name: str, weights: Path, device: str, processes: int, threads: int, batch: int,
                    channels_last: bool, precision: str, seconds: float, graph: str = "auto") -> float:
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_forward_loop, args=(model_name, str(weights), device, threads, batch,
                                                           channels_last, precision, graph, seconds, barrier,
                                                           results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


def model_ceiling(model_name: str, weights: Path, device: str, cores: int, seconds: float, log,
                  precision: str = "fp32") -> dict[str, Any]:
    trials = []
    if device == "cuda":
        for precision in ("fp16", "bf16", "fp32"):
            for batch in (64, 128, 256):
                rate = measure_forward(model_name, weights, "cuda", 1, cores, batch, True, precision, seconds)
                trials.append({"processes": 1, "threads": cores, "batch": batch, "channels_last": True,
                               "precision": precision, "graph": "eager", "images_per_s": rate})
                log(f"  model {precision} batch {batch}: {rate:.1f} images/s")
    else:
        splits = [(p, cores // p) for p in range(1, cores + 1) if cores % p == 0]
        batches = (4, 8, 16, 32) if model_name != "resnet50" else (4, 8, 16)
        for processes, threads in splits:
            for batch in batches:
                rate = measure_forward(model_name, weights, "cpu", processes, threads, batch, True, precision, seconds)
                trials.append({"processes": processes, "threads": threads, "batch": batch, "channels_last": True,
                               "precision": precision, "graph": "torchscript", "images_per_s": rate})
                log(f"  model {processes} proc x {threads} thr, batch {batch}, channels_last, torchscript, {precision}: "
                    f"{rate:.1f} images/s")
        best = max(trials, key=lambda t: t["images_per_s"])
        for channels_last, graph in ((True, "eager"), (False, "eager")):
            rate = measure_forward(model_name, weights, "cpu", best["processes"], best["threads"], best["batch"],
                                   channels_last, precision, seconds, graph)
            trials.append({**best, "channels_last": channels_last, "graph": graph, "images_per_s": rate})
            log(f"  model best split, eager, channels_last {channels_last}: {rate:.1f} images/s")
    best = max(trials, key=lambda t: t["images_per_s"])
    return {"best": best, "trials": trials}


# ---------------------------------------------------------------- ceiling pools --------------
_ALL_STARTED = None  # this pool's Barrier


def _init_pool_process(all_started, initializer, initargs) -> None:
    global _ALL_STARTED
    _ALL_STARTED = all_started
    initializer(*initargs)


def _once_all_started(work, item):
    _ALL_STARTED.wait(timeout=600)
    return work(item)


@contextlib.contextmanager
def started_pool(processes: int, initializer, initargs: tuple, work, first_items: list) -> Iterator[ProcessPoolExecutor]:
    """A spawn pool whose processes have all started, each having run `work` on one of
    `first_items`, before the caller's clock does. The pool spawns its processes one by one (~3 s
    of imports each here), and a warm-up that the first one finished alone let the decode
    ceiling's timed part start with the other still importing (896 against 1,144 images, 511
    images/s against 560-566 for the same pool once both ran)."""
    context = mp.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_pool_process,
                             initargs=(context.Barrier(processes), initializer, initargs)) as pool:
        list(pool.map(functools.partial(_once_all_started, work), first_items))  # one each: all wait for all
        yield pool


# ---------------------------------------------------------------- decode ceiling -------------
_PREP: Optional[Preprocessing] = None


def _init_decoder(model_name: str) -> None:
    global _PREP
    torch.set_num_threads(1)
    _PREP = resolve_model_source(model_name).preprocessing


def _decode_one(path: str) -> int:
    tensor = decode_and_preprocess(read_bytes(path, S3Options(), 1 << 30), _PREP)
    return tensor.shape[-1]


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once, so that the decode ceiling reads from the page cache, as the job does
    (the workload's copies are links to the same photos: the job reads them warm after the first
    copy). The first ceiling of a run must not be the one that pays for a cold disk."""
    for file in {f.resolve() for f in files}:
        file.read_bytes()


def decode_ceiling(model_name: str, files: list[Path], cores: int) -> dict[str, Any]:
    warm_page_cache(files)
    paths = [str(p) for p in files]
    with started_pool(cores, _init_decoder, (model_name,), _decode_one, paths[:cores]) as pool:
        list(pool.map(_decode_one, paths[: cores * 4]))
        started = time.perf_counter()
        list(pool.map(_decode_one, paths, chunksize=16))
        elapsed = time.perf_counter() - started
    return {"processes": cores, "images": len(paths), "images_per_s": len(paths) / elapsed}


def ceilings_again(args, weights: Path, files: list[Path], best: dict[str, Any]) -> dict[str, Any]:
    """The model ceiling (its best configuration only) and the decode ceiling measured again,
    right after the job: the job's ratio is then bracketed by ceilings taken before and after it,
    and a machine whose speed drifted during the run (a shared VM's neighbours, a busy disk)
    shows as the gap between the two instead of passing for the job's own efficiency."""
    model_rate = measure_forward(args.model, weights, args.device, best["processes"], best["threads"], best["batch"],
                                 best["channels_last"], best["precision"], args.seconds, best["graph"])
    decode_rate = decode_ceiling(args.model, files, args.cores)["images_per_s"]
    return {"model_images_per_s": model_rate, "decode_images_per_s": decode_rate,
            "combined_images_per_s": combined_ceiling(model_rate, decode_rate, args.device)}


# ---------------------------------------------------------------- S3 read ceiling ------------
READ_THREADS = 4  # the job's default --decode-threads: one worker per core, 4 fetch threads each
_S3: Optional[S3Options] = None


def _init_reader(endpoint: str) -> None:
    global _S3
    _S3 = S3Options(endpoint_url=endpoint)


def _read_one(uri: str) -> int:
    return len(read_bytes(uri, _S3, 1 << 30))


def _read_chunk(uris: list[str]) -> int:
    with ThreadPoolExecutor(READ_THREADS) as threads:
        return sum(threads.map(_read_one, uris))


def s3_read_ceiling(uris: list[str], endpoint: str, processes: int) -> dict[str, Any]:
    """images/s of fetching the objects alone (bytes, no decode) from the endpoint, laid out as the
    job's executors fetch: one process per core, READ_THREADS threads each. On the loopback
    endpoint the server's own CPU is in it: it shares the cores with everything else."""
    chunks = [uris[i::processes] for i in range(processes)]
    with started_pool(processes, _init_reader, (endpoint,), _read_chunk,
                      [chunk[:READ_THREADS * 2] for chunk in chunks]) as pool:
        started = time.perf_counter()
        list(pool.map(_read_chunk, chunks))
        elapsed = time.perf_counter() - started
    return {"processes": processes, "threads": READ_THREADS, "images": len(uris), "images_per_s": len(uris) / elapsed}


def s3_uris(uri: str, files: list[Path], root: Path) -> list[str]:
    """The objects `upload` wrote, in the workload's order."""
    return [uri + file.relative_to(root).as_posix() for file in files]


# ---------------------------------------------------------------- the job --------------------
def spark_submit() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def run_timed(command: list[str], env: dict[str, str], log_file: Path) -> float:
    started = time.perf_counter()
    with open(log_file, "w") as out:
        result = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} ... exited {result.returncode}; see {log_file}")
    return elapsed


def run_job(input_uri: str, output: Path, args, weights: Path, env: dict[str, str],
            extra: list[str], log_file: Path) -> dict[str, Any]:
    """spark-submit the job as a user would, with its own defaults (its model batch among them:
    `job_batch`) and whatever --job-arg adds."""
    command = [spark_submit(), "--master", f"local[{args.job_slots or args.cores}]",
               "--properties-file", str(PROJECT / "conf" / "spark-defaults.local.conf"),
               str(PROJECT / "jobs" / "infer_dogs.py"), "--input", input_uri, "--output", str(output),
               "--model", args.model, "--weights", str(weights),
               "--mode", "overwrite", *extra, *args.job_args]
    wall = run_timed(command, env, log_file)
    summary = json.loads((output / "summary.json").read_text())
    return {"wall_s": wall, "images": summary["counts"]["images"], "errors": summary["counts"]["errors"],
            "listed": summary["counts"]["listed"], "scored": summary["counts"]["scored"],
            "s3_retries": summary.get("s3_retries"),
            "inference_images_per_s": summary["images_per_s"]["inference"],
            "inference_s": summary["timing_s"]["inference"], "timing_s": summary["timing_s"],
            "inference_images_per_s_after_model_build": round(
                summary["counts"]["images"] / (summary["timing_s"]["inference"] - summary["timing_s"]["model_build_max"]), 2),
            "model_builds": summary["model_builds"], "devices": summary["devices"],
            "worker_peak_rss_mb": max(w["peak_rss_mb"] for w in summary["workers"])}


def job_batch(args) -> str:
    """The model batch the job runs with: --job-arg read by the job's own parser, else the job's
    default for the device."""
    from jobs.cli import build_parser

    asked = build_parser().parse_known_args(args.job_args)[0].batch_size
    batch = resolve_batch_size(asked, torch.device(args.device))
    return str(batch) if asked else f"{batch} (its default on {args.device})"


def combined_ceiling(model_rate: float, decode_rate: float, device: str, read_rate: Optional[float] = None) -> float:
    """What the stages reach together: they share the cores on CPU; on GPU the slower one bounds.
    With a read ceiling (an S3 endpoint), the job can go no faster than the endpoint serves, even
    with the whole machine to itself: the slower of the two bounds. (Adding the read's time to the
    CPU stages' instead, as if the loopback server shared the cores with them, gave a "ceiling"
    the job beat by 7%: the server's reads overlap with decoding.)"""
    combined = min(model_rate, decode_rate) if device == "cuda" else 1 / (1 / model_rate + 1 / decode_rate)
    return min(combined, read_rate) if read_rate else combined


def agreement(run_a: Path, run_b: Path) -> dict[str, Any]:
    """How far two runs' predictions agree, image by image (same images, other precision)."""
    columns = ["path", "pred_index", "pred_prob"]
    a = pd.read_parquet(run_a / "predictions", columns=columns)
    b = pd.read_parquet(run_b / "predictions", columns=columns)
    both = a.merge(b, on="path", suffixes=("_a", "_b")).dropna()
    return {"images": len(both), "top1_agreement": float((both["pred_index_a"] == both["pred_index_b"]).mean()),
            "max_abs_pred_prob_diff": float((both["pred_prob_a"] - both["pred_prob_b"]).abs().max())}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upload(endpoint: str, files: list[Path], root: Path, bucket: str) -> str:
    import boto3
    from boto3.s3.transfer import TransferConfig

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    config = TransferConfig(use_threads=False)
    for file in files:
        client.upload_file(str(file), bucket, "bench/" + file.relative_to(root).as_posix(), Config=config)
    return f"s3://{bucket}/bench/"


def s3_fault_runs(args, uri: str, endpoint: str, weights: Path, env: dict[str, str], job_precision: list[str],
                  work: Path, out: Path, log) -> dict[str, Any]:
    """The S3 job through the fault proxy: clean, at --s3-fault-rate, clean again."""
    from tests.fault_proxy import FAILURES, INDEPENDENT, FaultPlan, FaultProxy

    faulty = FaultPlan(rate=args.s3_fault_rate, kinds=FAILURES, seed=0, max_consecutive=INDEPENDENT)
    proxy = FaultProxy(endpoint).start()
    runs: dict[str, Any] = {}
    try:
        for key, plan in (("job_s3_proxy", FaultPlan()), ("job_s3_faults", faulty),
                          ("job_s3_proxy_again", FaultPlan())):
            proxy.set_plan(plan)
            log(f"job, loopback S3 through the fault proxy, {100 * plan.rate:.0f} % faults ...")
            runs[key] = run_job(uri, work / key.replace("_", "-"), args, weights, env,
                                ["--s3-endpoint-url", proxy.endpoint, "--no-report", *job_precision],
                                out / f"{key.replace('_', '-')}-{args.model}.log")
            runs[key]["proxy"] = {"requests": proxy.requests, "faults": dict(proxy.faults)}
    finally:
        proxy.stop()
    runs["s3_fault_rate"] = args.s3_fault_rate
    return runs


# ---------------------------------------------------------------- main -----------------------
def missing_packages(args) -> list[str]:
    """What this run needs beyond the job's own dependencies (the `bench` extra)."""
    import importlib.util

    wanted = (["dask"] if args.baselines else []) + (["moto"] if args.s3 else [])
    return [name for name in wanted if importlib.util.find_spec(name) is None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="a Stanford-Dogs-style tree (or its Images/ folder)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--copies", type=int, default=7, help="repeat the tree under this many prefixes")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per model-ceiling trial")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="CPU: the precision of the model ceiling and the job; with bf16 the job also runs in "
                             "fp32 in the same run, for the agreement and the fp32 ratios (baselines stay fp32)")
    parser.add_argument("--no-s3", dest="s3", action="store_false", help="skip the loopback S3 run")
    parser.add_argument("--s3-fault-rate", type=float, default=0.0, metavar="RATE",
                        help="also run the S3 job through a fault proxy failing this share of requests (e.g. 0.35)")
    parser.add_argument("--baselines", action="store_true", help="also run the three baselines: the Dask tutorial, the Databricks pattern, Spark's predict_batch_udf")
    parser.add_argument("--rss-check", action="store_true",
                        help="also run the job on one copy and on half the copies, to compare Python worker peak "
                             "RSS at 1x, N/2x and Nx images")
    parser.add_argument("--job-slots", type=int,
                        help="Spark task slots for the job (local[N]; default: --cores). On a GPU machine one Python "
                             "worker per core puts that many CUDA contexts on one GPU: on an H200 with 16 vCPUs "
                             "the executor side ran best with 8 workers x 2 decode threads, i.e. --job-slots 8 "
                             "--job-arg=--decode-threads=2 (scripts/bench_executors.py; the whole job on a GPU is "
                             "not measured yet)")
    parser.add_argument("--job-arg", dest="job_args", action="append", default=[],
                        help="extra argument for the job (repeatable), e.g. --job-arg=--decode-threads=2")
    parser.add_argument("--out", default="bench-output")
    args = parser.parse_args()

    missing = missing_packages(args)
    if missing:  # before minutes of ceilings, not after them
        parser.error(f"{' and '.join(missing)} not installed: .venv/bin/pip install -e '.[bench]'")
    if args.precision == "bf16" and args.device == "cpu" and not cpu_runs_bf16_natively():
        parser.error(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16: the job runs "
                     "--precision bf16 in fp32 here (udfs/model.py cpu_runs_bf16_natively)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="infer-dogs-bench-"))

    def log(message: str) -> None:
        print(message, flush=True)

    env = {**os.environ, **BENCH_ENV, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    try:
        files = build_workload(Path(args.images), args.copies, work / "data")
        weights = work / f"{args.model}-bench.pt"
        sys.path.insert(0, str(PROJECT))
        from tests.reference import make_spread_weights  # seeded init, last layer spread: real decisions

        make_spread_weights(args.model, 0, files[:len(files) // max(args.copies, 1)], weights)
        result: dict[str, Any] = {
            "model": args.model, "images": len(files), "cores": args.cores, "device": args.device,
            "job_slots": args.job_slots or args.cores, "job_args": args.job_args, "job_batch": job_batch(args),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "torch": torch.__version__,
                        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
        }
        log(f"workload: {len(files)} images ({args.copies} copies), model {args.model}, {args.cores} cores, {args.device}")

        log("model ceiling ...")
        precision = args.precision if args.device == "cpu" else "auto"
        result["precision"] = precision
        result["model_ceiling"] = model_ceiling(args.model, weights, args.device, args.cores, args.seconds, log,
                                                args.precision)  # CPU only: on GPU every precision is tried
        best = result["model_ceiling"]["best"]
        if precision == "bf16":
            log("model ceiling, fp32 ...")
            result["model_ceiling_fp32"] = model_ceiling(args.model, weights, args.device, args.cores, args.seconds, log)
        log("decode ceiling ...")
        result["decode_ceiling"] = decode_ceiling(args.model, files, args.cores)
        model_rate, decode_rate = best["images_per_s"], result["decode_ceiling"]["images_per_s"]
        combined = combined_ceiling(model_rate, decode_rate, args.device)
        result["combined_ceiling_images_per_s"] = combined
        job_precision = ["--precision", precision]

        def local_job(key: str, run_precision: str, when: str = "") -> dict[str, Any]:
            """The job on the local folder; `key` (job_local, job_local_fp32, ...) also names its
            output folder (run-local, run-local-fp32, ...) and its log."""
            log(f"job, local folder ({run_precision}){when} ...")
            return run_job(str(work / "data"), work / key.replace("job_", "run-").replace("_", "-"), args, weights,
                           env, ["--precision", run_precision], out / f"{key.replace('_', '-')}-{args.model}.log")

        local_runs = [("job_local", precision)]
        if precision == "bf16":
            local_runs.append(("job_local_fp32", "fp32"))

        result["job_local"] = local_job(*local_runs[0])
        log("ceilings again, right after the job ...")
        result["ceilings_after_job"] = ceilings_again(args, weights, files, best)
        if precision == "bf16":
            best32 = result["model_ceiling_fp32"]["best"]
            result["combined_ceiling_fp32_images_per_s"] = combined_ceiling(best32["images_per_s"], decode_rate, "cpu")
            result["job_local_fp32"] = local_job(*local_runs[1])
            result["bf16_vs_fp32"] = agreement(work / "run-local", work / "run-local-fp32")
        if args.rss_check:
            log("job, one copy (memory check) ...")
            result["job_one_copy"] = run_job(str(work / "data" / "copy00"), work / "run-one", args, weights,
                                             env, job_precision, out / f"job-one-copy-{args.model}.log")
            if args.copies >= 4:  # where the plateau is: half the copies against all of them
                half = work / "data-half"
                half.mkdir()
                for copy in sorted((work / "data").iterdir())[: args.copies // 2]:  # the listing follows
                    (half / copy.name).symlink_to(copy, target_is_directory=True)    # folder links
                log("job, half the copies (memory check) ...")
                result["job_half"] = run_job(str(half), work / "run-half", args, weights, env,
                                             job_precision, out / f"job-half-{args.model}.log")
        if args.s3:
            from moto.server import ThreadedMotoServer

            os.environ.update(BENCH_ENV)
            import logging

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
            port = free_port()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            try:
                endpoint = f"http://127.0.0.1:{port}"
                uri = upload(endpoint, files, work / "data", "bench")
                log("S3 read ceiling (loopback endpoint) ...")
                result["s3_read_ceiling"] = s3_read_ceiling(s3_uris(uri, files, work / "data"), endpoint, args.cores)
                result["combined_ceiling_s3_images_per_s"] = combined_ceiling(
                    model_rate, decode_rate, args.device, result["s3_read_ceiling"]["images_per_s"])
                log("job, loopback S3 ...")
                result["job_s3"] = run_job(uri, work / "run-s3", args, weights, env,
                                           ["--s3-endpoint-url", endpoint, *job_precision], out / f"job-s3-{args.model}.log")
                if args.s3_fault_rate:
                    result.update(s3_fault_runs(args, uri, endpoint, weights, env, job_precision, work, out, log))
            finally:
                server.stop()

        if args.baselines:
            listing = work / "files.txt"
            listing.write_text("\n".join(str(f) for f in files))
            baselines = PROJECT / "scripts" / "bench_baselines.py"
            spark_baseline = [spark_submit(), "--master", f"local[{args.cores}]", "--driver-memory", "2g", str(baselines)]
            for name, what, command in (
                    ("tutorial", "the Dask tutorial",
                     [sys.executable, str(baselines), "tutorial", str(listing), args.model, str(weights),
                      "--workers", str(args.cores)]),
                    ("databricks", "the Databricks pattern",
                     [*spark_baseline, "databricks", str(work / "data"), str(work / "run-databricks"),
                      args.model, str(weights)]),
                    ("predict_batch_udf", "Spark's predict_batch_udf",
                     [*spark_baseline, "predict-batch-udf", str(work / "data"), str(work / "run-predict-batch-udf"),
                      args.model, str(weights)])):
                log(f"baseline: {what} ...")
                result[name] = {"wall_s": run_timed(command, env, out / f"{name.replace('_', '-')}-{args.model}.log")}
            # The job again after the baselines: a whole-process ratio compares runs minutes apart, so
            # the job brackets the baselines in time, and a machine that slowed down or sped up
            # meanwhile shows as two different ratios instead of one flattering (or unfair) one.
            for key, run_precision in local_runs:
                result[f"{key}_again"] = local_job(f"{key}_again", run_precision, ", again after the baselines")

        job_rate = result["job_local"]["inference_images_per_s"]
        result["ratios"] = {"job_local_inference_vs_combined_ceiling": job_rate / combined,
                            "job_local_inference_vs_combined_ceiling_after_job":
                                job_rate / result["ceilings_after_job"]["combined_images_per_s"]}
        if "job_s3" in result:
            result["ratios"]["job_s3_inference_vs_combined_ceiling"] = result["job_s3"]["inference_images_per_s"] / combined
            result["ratios"]["job_s3_inference_vs_combined_ceiling_s3"] = (
                result["job_s3"]["inference_images_per_s"] / result["combined_ceiling_s3_images_per_s"])
        if "job_s3_faults" in result:
            clean = (result["job_s3_proxy"]["wall_s"] + result["job_s3_proxy_again"]["wall_s"]) / 2
            result["ratios"]["job_s3_faults_wall_vs_clean_wall"] = result["job_s3_faults"]["wall_s"] / clean
        if args.rss_check:
            result["ratios"]["worker_peak_rss_all_vs_one_copy"] = (
                result["job_local"]["worker_peak_rss_mb"] / result["job_one_copy"]["worker_peak_rss_mb"])
            if "job_half" in result:
                result["ratios"]["worker_peak_rss_all_vs_half"] = (
                    result["job_local"]["worker_peak_rss_mb"] / result["job_half"]["worker_peak_rss_mb"])
                result["ratios"]["worker_peak_rss_half_vs_one_copy"] = (
                    result["job_half"]["worker_peak_rss_mb"] / result["job_one_copy"]["worker_peak_rss_mb"])
        if "job_local_fp32" in result:
            result["ratios"]["job_local_fp32_inference_vs_combined_ceiling"] = (
                result["job_local_fp32"]["inference_images_per_s"] / result["combined_ceiling_fp32_images_per_s"])
        if args.baselines:
            for name in BASELINES:
                for job, suffix in (("job_local", ""), ("job_local_fp32", "_fp32")):
                    if job in result:
                        result["ratios"][f"{name}_wall_vs_job{suffix}_wall"] = (
                            result[name]["wall_s"] / result[job]["wall_s"])
                        result["ratios"][f"{name}_wall_vs_job{suffix}_wall_again"] = (
                            result[name]["wall_s"] / result[f"{job}_again"]["wall_s"])

        table = format_table(result)
        print(table)
        stem = f"bench-{args.model}-{args.device}" + (f"-{precision}" if precision == "bf16" else "")
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{stem}.txt").write_text(table + "\n")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_table(result: dict[str, Any]) -> str:
    best = result["model_ceiling"]["best"]
    rows = [
        ("model ceiling", f"{best['images_per_s']:.1f} images/s",
         f"{best['processes']} proc x {best['threads']} thr, batch {best['batch']}, "
         f"channels_last {best['channels_last']}, {best['graph']}, {best['precision']}"),
        ("decode ceiling", f"{result['decode_ceiling']['images_per_s']:.1f} images/s",
         f"{result['decode_ceiling']['processes']} processes"),
        ("combined ceiling", f"{result['combined_ceiling_images_per_s']:.1f} images/s",
         "1/(1/model+1/decode)" if result["device"] == "cpu" else "min(model, decode)"),
    ]
    if "s3_read_ceiling" in result:
        read = result["s3_read_ceiling"]
        rows.append(("s3 read ceiling", f"{read['images_per_s']:.1f} images/s",
                     f"bytes only, {read['processes']} processes x {read['threads']} threads, loopback endpoint"))
        rows.append(("combined ceiling, from s3", f"{result['combined_ceiling_s3_images_per_s']:.1f} images/s",
                     "min(combined, read)"))
    if "ceilings_after_job" in result:
        again = result["ceilings_after_job"]
        drift = again["combined_images_per_s"] / result["combined_ceiling_images_per_s"] - 1
        rows.append(("  again after the job", f"{again['combined_images_per_s']:.1f} images/s",
                     f"model {again['model_images_per_s']:.1f}, decode {again['decode_images_per_s']:.1f} "
                     f"({100 * drift:+.0f}%: the machine's own drift during the run)"))
    if "model_ceiling_fp32" in result:
        best32 = result["model_ceiling_fp32"]["best"]
        rows.append(("model ceiling, fp32", f"{best32['images_per_s']:.1f} images/s",
                     f"{best32['processes']} proc x {best32['threads']} thr, batch {best32['batch']}, "
                     f"channels_last {best32['channels_last']}, {best32['graph']}"))
        rows.append(("combined ceiling, fp32", f"{result['combined_ceiling_fp32_images_per_s']:.1f} images/s",
                     "1/(1/model+1/decode)"))
    precision = result.get("precision", "fp32")
    for name, where, combined_key in (("job_local", f"local, {precision}", "combined_ceiling_images_per_s"),
                                      ("job_s3", f"s3, {precision}", "combined_ceiling_images_per_s"),
                                      ("job_local_fp32", "local, fp32", "combined_ceiling_fp32_images_per_s")):
        if name in result:
            job = result[name]
            combined = result[combined_key]
            note = f"{result['ratios'][f'{name}_inference_vs_combined_ceiling']:.2f} x combined ceiling"
            if f"{name}_inference_vs_combined_ceiling_after_job" in result["ratios"]:
                note += f" ({result['ratios'][f'{name}_inference_vs_combined_ceiling_after_job']:.2f} x the one after)"
            if f"{name}_inference_vs_combined_ceiling_s3" in result["ratios"]:
                note += f" ({result['ratios'][f'{name}_inference_vs_combined_ceiling_s3']:.2f} x the one from s3)"
            rows.append((f"job ({where}) inference", f"{job['inference_images_per_s']:.1f} images/s", note))
            rows.append(("  after model build", f"{job['inference_images_per_s_after_model_build']:.1f} images/s",
                         f"{job['inference_images_per_s_after_model_build'] / combined:.2f}"
                         f" x combined ceiling (build + trace took {job['timing_s']['model_build_max']:.1f} s per worker)"))
            rows.append((f"job ({where}) whole process", f"{job['wall_s']:.1f} s", f"{job['images']} images"))
    if "job_s3_faults" in result:
        rows += s3_fault_rows(result)
    if "bf16_vs_fp32" in result:
        agree = result["bf16_vs_fp32"]
        rows.append(("bf16 vs fp32 top-1", f"{100 * agree['top1_agreement']:.1f} %",
                     f"same class on {agree['images']} images; max |pred_prob diff| {agree['max_abs_pred_prob_diff']:.4f}"))
    if "job_one_copy" in result:  # Python worker peak RSS on 1x, N/2x and Nx the images
        one = result["job_one_copy"]
        rows.append(("worker peak RSS, one copy", f"{one['worker_peak_rss_mb']:.0f} MB", f"{one['images']} images"))
        if "job_half" in result:
            half = result["job_half"]
            rows.append(("  half the copies", f"{half['worker_peak_rss_mb']:.0f} MB",
                         f"{half['images']} images: {result['ratios']['worker_peak_rss_half_vs_one_copy']:.2f} x one copy"))
        also = (f", {result['ratios']['worker_peak_rss_all_vs_half']:.2f} x half" if "job_half" in result else "")
        rows.append(("  all the copies", f"{result['job_local']['worker_peak_rss_mb']:.0f} MB",
                     f"{result['job_local']['images']} images: "
                     f"{result['ratios']['worker_peak_rss_all_vs_one_copy']:.2f} x one copy{also}"))
    for job, where in (("job_local_again", f"local, {precision}"), ("job_local_fp32_again", "local, fp32")):
        if job in result:
            rows.append((f"job ({where}) again", f"{result[job]['wall_s']:.1f} s",
                         "whole process, run after the baselines"))
    for name in BASELINES:
        if name in result:
            ratios = result["ratios"]

            def faster(suffix: str) -> str:
                text = f"{ratios[f'{name}_wall_vs_job_wall{suffix}']:.2f} x"
                if f"{name}_wall_vs_job_fp32_wall{suffix}" in ratios:
                    text += f" ({precision}), {ratios[f'{name}_wall_vs_job_fp32_wall{suffix}']:.2f} x (fp32)"
                return text

            text = f"job is {faster('')} faster"
            if f"{name}_wall_vs_job_wall_again" in ratios:
                text += f"; run again after: {faster('_again')}"
            rows.append((f"{BASELINES[name]} whole process", f"{result[name]['wall_s']:.1f} s", text))
    machine = result["machine"]
    header = (f"infer-dogs bench: {result['model']}, {result['images']} images, {result['cores']} cores"
              + (f" ({machine['cpu_capability']})" if machine.get("cpu_capability") else "")
              + f", {result['device']}{' (' + machine['gpu'] + ')' if machine['gpu'] else ''}"
              + (f"; the job's batch {result['job_batch']}" if "job_batch" in result else ""))
    return table_lines(header, rows, 16)


def s3_fault_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    faulty, before, after = result["job_s3_faults"], result["job_s3_proxy"], result["job_s3_proxy_again"]
    reads, listing = faulty["s3_retries"]["reads"], faulty["s3_retries"]["listing"]
    proxy = faulty["proxy"]
    return [
        ("job (s3 via proxy) clean", f"{before['wall_s']:.1f} s",
         f"whole process; again after: {after['wall_s']:.1f} s"),
        (f"job (s3, {100 * result['s3_fault_rate']:.0f} % faults)", f"{faulty['wall_s']:.1f} s",
         f"{result['ratios']['job_s3_faults_wall_vs_clean_wall']:.2f} x the clean runs' mean; {faulty['scored']} of "
         f"{faulty['listed']} listed images scored, {faulty['errors']} errors"),
        ("  retries", f"{reads['requests_retried'] + listing['requests_retried']}",
         f"requests sent again ({reads['requests_retried']} GETs for {reads['images_retried']} images, "
         f"{listing['requests_retried']} listing requests), "
         f"{reads['throttling_responses'] + listing['throttling_responses']} SlowDown; "
         f"{reads['images_given_up']} images given up; the proxy failed {sum(proxy['faults'].values())} "
         f"of {proxy['requests']} requests"),
    ]


def table_lines(header: str, rows: list[tuple[str, str, str]], value_width: int) -> str:
    """The header, then one aligned line per (name, value, note) row."""
    width = max(len(name) for name, _, _ in rows)
    return "\n".join([header] + [f"  {name:<{width}}  {value:>{value_width}}  {note}" for name, value, note in rows])


if __name__ == "__main__":
    sys.exit(main())
