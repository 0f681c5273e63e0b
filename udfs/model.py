"""A model's weights, its device, precision and graph: building the model a worker runs.

Driver side (`resolve_weights`): turn `--weights PATH|s3://...`, `--random-weights SEED` or
the library's pretrained weights (`udfs.model_source`) into one local state-dict file and its
sha256. The driver ships that file to executors with `SparkContext.addFile`, so the weights are
fetched once per run, not once per executor, and executors never need internet access.

Executor side (`load_model`, `task_device`): build the architecture, load the shipped state dict
with `torch.load(weights_only=True)`, and pick the device Spark's resource scheduling assigned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import pickle
import platform
import re
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch

from udfs.errors import WeightsError
from udfs.labels import IMAGENET, IMAGENET_CLASSES
from udfs.model_source import ModelSource, pretrained_weights_file
from udfs.settings import S3Options, WeightsSource

log = logging.getLogger(__name__)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def random_state_dict(source: ModelSource, seed: int) -> dict[str, torch.Tensor]:
    """The seeded random initialisation every process reproduces (tests build it too)."""
    torch.manual_seed(seed)
    return source.build().state_dict()


def load_state_dict_file(path: Path, shown_as: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Only plain tensors: `weights_only=True` refuses pickled code. Errors name the file as the
    user gave it (`shown_as`), not the driver's local copy."""
    name = shown_as or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(exc))
        if not found:  # not a pickle of anything: text, an image, a truncated download ...
            # torch's own text advises weights_only=False, which is no answer for such a file: keep
            # only the unpickler's reason ("Unsupported operand 105")
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            detail = reason.group(1).strip() if reason else type(exc).__name__
            raise WeightsError(f"cannot load weights from {name}: not a PyTorch checkpoint ({detail})") from exc
        # weights_only met a class or function: pickled code
        raise WeightsError(f"cannot load weights from {name}: it holds pickled objects or code, not only "
                           f"tensors ({found.group(0)}); weights are loaded with "
                           "torch.load(weights_only=True) and nothing else") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError ... on files that are no checkpoint
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load weights from {name}: not a PyTorch checkpoint ({first_line})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{name} does not hold a state dict (found {type(state).__name__})")
    return state


def resolve_weights(
    source: ModelSource,
    weights: str | None,
    random_seed: int | None,
    workdir: Path,
    s3: S3Options,
) -> WeightsSource:
    """Materialise the run's weights as one local file (`driver_path`); check they fit the model."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = source.architecture
    if random_seed is not None:
        path = workdir / f"{stem}-random-seed{random_seed}.pt"
        torch.save(random_state_dict(source, random_seed), path)
        kind, description = "random", f"RANDOM weights (seed {random_seed}): predictions are meaningless"
    elif weights:
        path = _fetch_weights_file(weights, workdir, s3)
        kind, description = "file", weights
    else:
        path = pretrained_weights_file(source, workdir)
        kind, description = "default", f"{source.library} {source.pretrained}"
    _check_fits(source, path, weights or description)
    sha256 = sha256_of(path)
    if path.parent == workdir:  # name by content: Spark refuses one file name shipped from two paths
        named = workdir / f"{stem}-{sha256[:16]}.pt"
        path.replace(named)
        path = named
    return WeightsSource(kind=kind, description=description, sha256=sha256, file_name=path.name, seed=random_seed,
                         driver_path=str(path))


def _fetch_weights_file(uri: str, workdir: Path, s3: S3Options) -> Path:
    from udfs.storage import download_to_file, is_s3_uri, local_path, split_s3_uri

    if is_s3_uri(uri):
        target = workdir / f"incoming-{Path(split_s3_uri(uri)[1]).name}"
        try:
            download_to_file(uri, s3, target)
        except Exception as exc:  # botocore ClientError / connection errors
            raise WeightsError(f"cannot download weights {uri}: {exc}") from exc
        return target
    source = local_path(uri)
    if not source.is_file():
        raise WeightsError(f"weights file not found: {uri}")
    target = workdir / f"incoming-{source.name}"
    shutil.copyfile(source, target)
    return target


def _check_fits(source: ModelSource, path: Path, shown_as: str) -> None:
    """The weights load into the architecture, and their head has one output per class."""
    state = load_state_dict_file(path, shown_as)
    head = source.head_size(state)
    if head is not None and head != source.num_classes:
        if source.classes.origin == IMAGENET:
            raise WeightsError(f"the weights in {shown_as} have a {head}-class head: give its classes in index "
                               f"order with --classes FILE (without it the head must be {IMAGENET}'s "
                               f"{IMAGENET_CLASSES} classes)")
        raise WeightsError(f"the weights in {shown_as} have a {head}-class head, but {source.classes.origin} "
                           f"lists {source.num_classes} classes")
    model = source.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise WeightsError(f"weights in {shown_as} do not fit {source.name}: {first_line}") from exc


def load_model(source: ModelSource, weights_file: Path, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """Architecture + shipped state dict, in eval mode, on `device`."""
    model = source.build()
    model.load_state_dict(load_state_dict_file(weights_file))
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device=device, memory_format=memory_format)


def task_device(gpu_addresses: list[str]) -> torch.device:
    """The GPU Spark assigned to this task, else any visible GPU, else the CPU."""
    if gpu_addresses:
        if not torch.cuda.is_available():
            log.warning("Spark assigned GPU %s but CUDA is not available here: using the CPU", gpu_addresses)
            return torch.device("cpu")
        ordinal = int(gpu_addresses[0]) if gpu_addresses[0].isdigit() else 0
        if ordinal >= torch.cuda.device_count():
            log.warning(
                "GPU address %s is not a visible CUDA ordinal (%d visible, isolation remaps them): using cuda:0",
                gpu_addresses[0],
                torch.cuda.device_count(),
            )
            ordinal = 0
        return torch.device("cuda", ordinal)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_graph(graph: str, device: torch.device) -> str:
    """`auto`: TorchScript on CPU (oneDNN Graph fusions), eager on CUDA (AMP does the work there)."""
    if graph == "auto":
        return "torchscript" if device.type == "cpu" else "eager"
    return graph


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32. `auto`: fp16 on CUDA, fp32 on CPU.

    fp16 asked for on a CPU (a GPU job's settings on an executor without a GPU) runs in fp32:
    CPU fp16 autocast ran ~10x slower than fp32 here and gave NaN probabilities for
    mobilenet_v3_small's traced graph (scripts/bench_executors.py --device cpu). bf16 on a CPU
    without native bf16 runs in fp32 too (`cpu_runs_bf16_natively`). summary.json says what ran."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        _warn_fp16_on_cpu()
        precision = "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_runs_bf16_natively():
        _warn_bf16_emulated()
        precision = "fp32"
    return PRECISION_DTYPES[precision]


PRECISION_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(autocast_dtype: Optional[torch.dtype]) -> str:
    """What a model actually runs in (`resolve_precision`'s result), for the run summary."""
    return next(name for name, dtype in PRECISION_DTYPES.items() if dtype == autocast_dtype)


def cpu_runs_bf16_natively() -> bool:
    """Whether this CPU has bf16 instructions: on x86 AVX512-BF16 or AMX, elsewhere (Arm's BF16)
    what oneDNN reports.

    Without them bf16 is emulated: on an AVX2-only EPYC ResNet50's traced bf16 graph ran 0.8
    images/s per thread against 6.9 in fp32 (8.6x slower), where an EPYC with AVX512-BF16 ran it
    ~1.9x faster than fp32. (AVX-512 without BF16, whose emulation oneDNN also offers, was not
    measured here; PyTorch's CPU autocast guidance names AVX512-BF16 and AMX.) bf16 on a CPU is
    only ever asked for speed."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return any(getattr(torch.cpu, name, lambda: False)()
                   for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    onednn_says = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(onednn_says()) if onednn_says is not None else True


AUTO_BATCH_SIZE = {"cpu": 8, "cuda": 256}


def resolve_batch_size(batch_size: Optional[int], device: torch.device) -> int:
    """Images per forward pass: the one asked for, else the measured best for the device.

    CPU 8: mobilenet_v3_small's job ran 283-290 images/s at 8, 269-282 at 4 and 249-267 at 16
    (2 cores, local[2]); ResNet50's ceiling is flat from 4 to 16, and a smaller batch means a
    shorter warm-up of the fused graph and less padding at the end of a task. CUDA 256: one
    H200 fed by 16 vCPUs reached 0.82-1.07 of its ceiling at 128-256 and 0.75 at 64
    (scripts/bench_executors.py, docs/performance.md)."""
    return batch_size or AUTO_BATCH_SIZE.get(device.type, AUTO_BATCH_SIZE["cpu"])


def exact_fp32_on_cuda(device: torch.device, autocast_dtype: Optional[torch.dtype]) -> None:
    """fp32 on CUDA means fp32: PyTorch lets cuDNN run fp32 convolutions in TF32 by default, which
    moved ResNet50's probabilities by up to 1.0e-2 from the CPU reference and changed one top-1 of
    120 (H200, scripts/bench_executors.py). Process-wide; a Python worker runs one precision."""
    if device.type == "cuda" and autocast_dtype is None:
        torch.backends.cudnn.allow_tf32 = False


@functools.cache
def _warn_fp16_on_cpu() -> None:
    log.warning("--precision fp16 on a CPU: running in fp32 (use bf16 for reduced precision on CPU)")


@functools.cache
def _warn_bf16_emulated() -> None:
    log.warning("--precision bf16 on a CPU without bf16 instructions (AVX512-BF16, AMX): running in fp32, "
                "which is several times faster there")


def autocast_to(device: torch.device, dtype: Optional[torch.dtype], cache_enabled: bool = True):
    """Autocast to `dtype` on the device, or nothing for fp32 (dtype None). Tracing wants
    `cache_enabled=False` (PyTorch's advice for torch.jit.trace under autocast)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def _script(model: torch.nn.Module, example: torch.Tensor, device: torch.device, autocast_dtype: Optional[torch.dtype],
            fuse: bool) -> torch.jit.ScriptModule:
    """Trace and freeze; with `fuse`, oneDNN Graph fusion, else torch.jit.optimize_for_inference.
    The trace runs the model once eagerly, on one image of the example: ResNet50's build is
    ~0.9 s shorter than when tracing the whole batch of 8 (2.1 s instead of 3.0, one thread;
    mobilenet_v3_small 0.5 s either way). torchvision's classifiers trace the batch dimension
    as a variable: traced on one image, 13 architectures (ResNet, MobileNet v2, EfficientNet,
    ConvNeXt, DenseNet, RegNet, SqueezeNet, GoogLeNet, Inception v3, ShuffleNet, ViT, Swin,
    MaxViT) gave eager mode's outputs on a batch of 3 within float rounding.
    Two calls on the whole example follow: the profiling runs in which oneDNN Graph compiles
    its partitions for the batch shape, so that a failure shows here, not on the first batch of
    images, and so that every batch of images runs the fused graph (with the predictor padding
    short batches to this shape, no image's result depends on what its worker ran before).
    They cost up to ~1.7 s of the build (ResNet50, batch 8, one thread)."""
    torch.jit.enable_onednn_fusion(fuse)  # process-wide: this worker's graphs are all ours
    with torch.inference_mode(False), torch.no_grad(), autocast_to(device, autocast_dtype, cache_enabled=False), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        frozen = torch.jit.freeze(torch.jit.trace(model, example[:1], check_trace=False).eval())
        if not fuse:
            frozen = torch.jit.optimize_for_inference(frozen)
        for _ in range(2):
            frozen(example)
    return frozen


def optimize_graph(model: torch.nn.Module, graph: str, device: torch.device, batch_size: int,
                   crop_size: tuple[int, ...], channels_last: bool,
                   autocast_dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """The model as it will run: eager, traced+frozen TorchScript, or torch.compile'd.

    Freezing folds batch norm into convolutions. On CPU the frozen graph then runs with oneDNN
    Graph fusion (convolution + activation + add as one kernel), the fastest CPU configuration
    measured here, one thread per process: mobilenet_v3_small 580-615 images/s per thread
    against 487 frozen and 327 with torch.jit.optimize_for_inference (which slows that model),
    ResNet50 13.1 against 11.2 and 12.5, bf16 ResNet50 26.3 against 22.6. Outputs stay within
    float rounding of eager mode (tests compare both with the reference). On CUDA TorchScript
    uses optimize_for_inference; a graph that fails to fuse falls back to it, and a model that
    cannot be traced runs eagerly.
    With an autocast dtype (--precision fp16/bf16) the trace is taken under autocast, so the
    frozen graph holds the reduced-precision kernels: a graph traced in fp32 and run under
    autocast gives reduced-precision results at fp32 speed (measured on CPU, ResNet50 bf16:
    12.4 images/s per thread traced in fp32, 21.4 traced under autocast)."""
    graph = resolve_graph(graph, device)
    if graph == "compile":
        return torch.compile(model)
    if graph == "torchscript":
        height, width = (crop_size * 2)[:2]  # (224,) is square
        example = torch.zeros(batch_size, 3, height, width, device=device)
        if channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        for fuse in ((True, False) if device.type == "cpu" else (False,)):
            try:
                return _script(model, example, device, autocast_dtype, fuse)
            except Exception as exc:  # next: without fusion; last: eagerly
                log.warning("cannot %s %s with TorchScript (%s)", "fuse" if fuse else "trace", type(model).__name__,
                            exc)
        torch.jit.enable_onednn_fusion(False)
        log.warning("running %s eagerly", type(model).__name__)
    return model
