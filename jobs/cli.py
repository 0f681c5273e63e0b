"""Command line and config file -> one validated `Settings` (driver side, before Spark starts).

Every option has one spelling: the CLI flag `--batch-size` is the config key `batch_size` (or
`batch-size`) in a JSON or TOML file given with `--config`; the command line wins over the file.
Bad input raises `UsageError`, which `jobs.infer_dogs.main` turns into one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

from udfs.settings import GRAPH_MODES, PRECISIONS, PROGRESS_MODES, WRITE_MODES, S3Options, Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 clusters
    import tomli as tomllib

EXIT_USAGE = 2
S3_FLAGS = {
    "s3_endpoint_url": "endpoint_url",
    "s3_anonymous": "anonymous",
    "s3_region": "region",
    "s3_max_attempts": "max_attempts",
    "s3_retry_budget": "retry_budget_s",
    "s3_connect_timeout": "connect_timeout_s",
    "s3_read_timeout": "read_timeout_s",
}


class UsageError(ValueError):
    """Bad arguments, config or input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the usage block and exit
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="infer-dogs",
        description=(
            "Classify every image under INPUT (s3://bucket/prefix/ or a local folder) with a "
            "torchvision or timm model on Spark executors (GPU when Spark assigns one, else CPU), and "
            "write predictions/, per_class_accuracy/ (Parquet) and summary.json under OUTPUT. "
            "An image's truth is its folder: the model's class with the folder's WordNet id "
            "(Stanford-Dogs folders <wnid>-<Breed>), else the class named exactly as the folder; "
            "a prediction is correct when it is that class."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="After a run: `infer-dogs report RUN_DIR` rebuilds RUN_DIR/report.html; "
               "`infer-dogs compare RUN_A RUN_B` shows per-breed accuracy differences (each has --help).",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", help="s3://bucket/prefix/, s3a://..., a local folder or file:// URI (required)")
    io.add_argument("--output", help="run directory: local path, file://, hdfs://, s3:// or dbfs:/ where the cluster can write (required)")
    io.add_argument("--mode", choices=WRITE_MODES, default="error",
                    help="what to do when OUTPUT already holds a run: stop with an error, or replace it")
    io.add_argument("--resume", action="store_true",
                    help="finish an interrupted run in OUTPUT: keep its committed predictions (same model and "
                         "weights), score only the images without a row, then aggregate everything")
    io.add_argument("--commit-every", type=int, default=10_000, metavar="N",
                    help="commit predictions in chunks of N images: a run killed part-way keeps the "
                         "finished chunks for --resume")
    io.add_argument("--limit", type=int, default=None, help="score only the first N images (in listing order)")
    io.add_argument("--label-map", default=None,
                    help="CSV with columns label,wnid giving the truth for folders not named <wnid>-<Breed>")
    io.add_argument("--config", default=None, help="JSON or TOML file with the same keys as these flags; flags win")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default="resnet50",
                       help="a torchvision classification model name, or timm/<name> for any timm architecture")
    model.add_argument("--weights", default=None,
                       help="state dict file (local path or s3:// URI), loaded with weights_only=True; "
                            "default: the library's pretrained weights, downloaded once on the driver")
    model.add_argument("--classes", default=None, metavar="FILE",
                       help="the head's classes in index order (local path or s3:// URI): one per line, as "
                            "ImageFolder(...).classes gives them (n02085620-Chihuahua carries a wnid), or a CSV "
                            "index,label[,wnid]. The weights' head must have as many outputs; without it the head "
                            "must be ImageNet-1k's 1000. A folder's truth is the class with its wnid, else the "
                            "class named exactly as the folder")
    model.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                       help="seeded random weights, for tests and offline demos only: predictions are meaningless")
    model.add_argument("--top-k", type=int, default=5, help="how many classes to keep per image")
    model.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="autocast precision; auto = fp16 on CUDA, fp32 on CPU (fp16 on a CPU executor runs "
                            "fp32; fp32 on CUDA is exact, no TF32). bf16 on a CPU with AVX512-BF16 or AMX runs "
                            "ResNet50 ~1.8x faster, with probabilities that differ from fp32 in the second or third "
                            "digit (README, Performance); a CPU without them (AVX2 only) ran it ~8x slower, so it "
                            "runs fp32 there (summary.json: precisions)")
    model.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                       help="keep NCHW memory layout (channels_last is faster for convolutions)")
    model.add_argument("--graph", choices=GRAPH_MODES, default="auto",
                       help="how the model runs: eager; torchscript (traced and frozen; on CPU run with oneDNN Graph "
                            "fusion: 1.34-1.38x eager's images/s in bench.py); compile (torch.compile, long warm-up, for long GPU runs); "
                            "auto = torchscript on CPU, eager on CUDA")
    model.add_argument("--gpu-decode", action="store_true",
                       help="decode JPEGs in batches on the model's device (nvjpeg on CUDA); others use Pillow")

    perf = parser.add_argument_group("performance")
    perf.add_argument("--batch-size", type=int, default=None,
                      help="images per model forward pass; default per executor device: 8 on CPU, 256 on CUDA "
                           "(the measured best, docs/performance.md)")
    perf.add_argument("--arrow-batch-size", type=int, default=None,
                      help="paths per Arrow batch handed to the UDF (spark.sql.execution.arrow.maxRecordsPerBatch); "
                           "default: that setting where it was submitted (spark-submit --conf, spark-defaults, a "
                           "cluster's Spark config), else 256")
    perf.add_argument("--decode-threads", type=int, default=4, help="fetch+decode threads per Python worker")
    perf.add_argument("--torch-threads", type=int, default=None,
                      help="torch intra-op threads per task (default: Spark's spark.task.cpus)")
    perf.add_argument("--tasks-per-slot", type=int, default=3, help="scoring partitions per executor core")
    perf.add_argument("--max-image-bytes", type=int, default=64 * 1024 * 1024,
                      help="objects larger than this are not read (error_kind too_large)")
    perf.add_argument("--master", default=None,
                      help="Spark master when not set by spark-submit (default local[*])")
    perf.add_argument("--gpu-stage-only", action="store_true",
                      help="only the scoring stage (which also writes predictions) asks Spark for GPUs, through a "
                           "stage-level TaskResourceProfile; the other stages are not held to one task per GPU share. "
                           "Needs spark.executor.resource.gpu.amount, no spark.task.resource.gpu.amount, and a "
                           "cluster manager (standalone, YARN, Kubernetes)")
    perf.add_argument("--gpu-task-amount", type=float, default=None, metavar="FRACTION",
                      help="with --gpu-stage-only: the GPU share of one scoring task (1: one task per GPU; "
                           "0.25: four tasks share a GPU); default 1")

    s3 = parser.add_argument_group("S3")
    s3.add_argument("--s3-endpoint-url", default=None, help="custom S3 endpoint (MinIO, moto, a VPC endpoint)")
    s3.add_argument("--s3-anonymous", action="store_true", help="unsigned requests, for public buckets")
    s3.add_argument("--s3-region", default=None, help="S3 region (default: boto3's own resolution)")
    s3.add_argument("--s3-max-attempts", type=int, default=S3Options.max_attempts,
                    help="attempts per request, the first included: throttling (SlowDown, 503), 5xx, resets, "
                         "timeouts and bodies cut short are sent again after a jittered exponential backoff "
                         f"({S3Options.backoff_base_s:g} s doubling, at most {S3Options.backoff_cap_s:g} s); a "
                         "missing or forbidden object is not")
    s3.add_argument("--s3-retry-budget", type=float, default=S3Options.retry_budget_s, metavar="SECONDS",
                    help="per image (or listing page): no retry starts later than this after its first attempt; "
                         "still failing then: one read_error row")
    s3.add_argument("--s3-connect-timeout", type=float, default=10.0, help="seconds to wait for a connection")
    s3.add_argument("--s3-read-timeout", type=float, default=60.0,
                    help="seconds to wait for an answer; a request past it is retried like a 5xx")

    run = parser.add_argument_group("what the run shows")
    run.add_argument("--dry-run", action="store_true",
                     help="list the input, print images per class and the number of scoring tasks, score nothing")
    run.add_argument("-v", "--verbose", action="count", default=0,
                     help="more logging: -v shows Spark's INFO log and our DEBUG log (default: Spark WARN)")
    run.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                     help="progress while scoring: a live bar, a log line every --progress-interval seconds, "
                          "or nothing; auto = bar on a terminal, log lines otherwise")
    run.add_argument("--progress-interval", type=float, default=30.0,
                     help="seconds between progress log lines (when not showing a bar)")
    run.add_argument("--no-report", dest="report", action="store_false",
                     help="do not write report.html and the PNG charts at the end of the run")
    return parser


def load_config_file(path: str) -> dict[str, Any]:
    """Keys of a JSON or TOML config, normalised to the flags' dest names."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        if file.suffix.lower() == ".toml":
            data = tomllib.loads(file.read_text())
        else:
            data = json.loads(file.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"config file {path} must hold a table/object of settings")
    return {key.replace("-", "_"): value for key, value in data.items()}


def parse_settings(argv: Optional[Sequence[str]] = None) -> Settings:
    """CLI (+ config file) -> validated Settings. Raises UsageError."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**config_defaults(parser, load_config_file(args.config), args.config))
        args = parser.parse_args(argv)
    return settings_from_args(args)


def config_defaults(parser: argparse.ArgumentParser, config: dict[str, Any], path: str) -> dict[str, Any]:
    """A config file's keys as the parser's defaults, each checked as its flag would be: keys are a
    flag's name or its setting's (`no_report` or `report`), on/off flags take true/false (a JSON
    string "false" would otherwise count as on), numbers take numbers, choices their choices."""
    actions = {}
    for action in parser._actions:
        if action.dest in ("help", "config"):
            continue
        actions[action.dest] = (action, False)
        for option in action.option_strings:
            name = option.lstrip("-").replace("-", "_")
            if name != action.dest:
                actions.setdefault(name, (action, True))
    unknown = sorted(set(config) - set(actions))
    if unknown:
        raise UsageError(f"unknown key(s) in {path}: {', '.join(unknown)}")
    defaults = {}
    for key, value in config.items():
        action, by_flag_name = actions[key]
        defaults[action.dest] = config_value(action, by_flag_name, key, value, path)
    return defaults


def config_value(action: argparse.Action, by_flag_name: bool, key: str, value: Any, path: str) -> Any:
    def refuse(expected: str) -> UsageError:
        return UsageError(f"{key} in {path} must be {expected}, not {value!r}")

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise refuse("true or false")
        if by_flag_name and isinstance(action, argparse._StoreFalseAction):
            return not value  # `no_report = true` is `report = false`
        return value
    if isinstance(action, argparse._CountAction) or action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse("a whole number")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse("a number")
        value = float(value)
    elif value is not None and not isinstance(value, str):
        raise refuse("a string")
    if action.choices is not None and value not in action.choices:
        raise refuse(f"one of {', '.join(map(str, action.choices))}")
    return value


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = vars(args)
    s3 = S3Options(**{field: values[flag] for flag, field in S3_FLAGS.items()})
    names = {f.name for f in fields(Settings)} - {"s3", "weights_source", "run_id"}
    settings = Settings(**{name: values[name] for name in names if name in values}, s3=s3)
    validate(settings)
    return settings


def validate_model(settings: Settings) -> Settings:
    """The settings with `--model` resolved (udfs.model_source) and, with `--classes`, its head
    made that class list's, apart from `validate`: resolving imports torchvision (~2.5 s of the
    driver's one core), so a random-weights run makes it on the torch side, once the background
    import is done (Spark starts meanwhile); other runs and dry runs make it before Spark starts
    or the plan is printed. An unknown name or a bad classes file is a UsageError in one line."""
    from udfs.errors import ClassListError, ModelSourceError
    from udfs.labels import read_class_list
    from udfs.model_source import resolve_model_source

    if settings.model_source is not None:
        return settings
    try:
        source = resolve_model_source(settings.model)
        if settings.classes:
            source = source.with_classes(read_class_list(settings.classes, settings.s3))
    except (ModelSourceError, ClassListError) as exc:
        raise UsageError(str(exc)) from None
    return settings.with_model_source(source)


def validate(settings: Settings) -> None:
    """Everything that needs no torch (see `validate_model`)."""
    from udfs.storage import is_s3_uri, local_path, split_s3_uri

    if not settings.input:
        raise UsageError("--input is required (s3://bucket/prefix/ or a local folder)")
    if not settings.output:
        raise UsageError("--output is required (the run directory)")
    for flag, uri in (("--input", settings.input), ("--output", settings.output), ("--weights", settings.weights),
                      ("--classes", settings.classes)):
        if uri and is_s3_uri(uri):
            try:
                split_s3_uri(uri)
            except ValueError as exc:
                raise UsageError(f"{flag}: {exc} (s3://bucket/key)") from None
    if not is_s3_uri(settings.input) and not local_path(settings.input).exists():
        raise UsageError(f"input folder not found: {settings.input}")
    if settings.weights and settings.random_weights is not None:
        raise UsageError("--weights and --random-weights exclude each other")
    if settings.weights and not is_s3_uri(settings.weights) and not local_path(settings.weights).is_file():
        raise UsageError(f"weights file not found: {settings.weights}")
    if settings.classes and not is_s3_uri(settings.classes) and not local_path(settings.classes).exists():
        raise UsageError(f"classes file not found: {settings.classes}")
    if settings.label_map and not Path(settings.label_map).is_file():
        raise UsageError(f"label map not found: {settings.label_map}")
    positive = ("top_k", "decode_threads", "tasks_per_slot", "max_image_bytes")
    for name in positive:
        if getattr(settings, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("batch_size", "arrow_batch_size", "limit", "torch_threads"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if settings.mode not in WRITE_MODES:
        raise UsageError(f"--mode must be one of {', '.join(WRITE_MODES)}")
    if settings.resume and settings.mode == "overwrite":
        raise UsageError("--resume and --mode overwrite exclude each other (resume keeps OUTPUT's predictions)")
    if settings.commit_every < 1:
        raise UsageError("--commit-every must be at least 1")
    if settings.graph not in GRAPH_MODES:
        raise UsageError(f"--graph must be one of {', '.join(GRAPH_MODES)}")
    if settings.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}")
    if settings.s3.max_attempts < 1:
        raise UsageError("--s3-max-attempts must be at least 1")
    if settings.s3.retry_budget_s < 0:
        raise UsageError("--s3-retry-budget must be at least 0 seconds")
    if settings.s3.connect_timeout_s <= 0 or settings.s3.read_timeout_s <= 0:
        raise UsageError("--s3-connect-timeout and --s3-read-timeout must be more than 0 seconds")
    if settings.top_k > 1000:
        raise UsageError("--top-k must be at most 1000")
    if settings.gpu_task_amount is not None:
        if not settings.gpu_stage_only:
            raise UsageError("--gpu-task-amount needs --gpu-stage-only "
                             "(without it, every stage's share is spark.task.resource.gpu.amount)")
        amount = settings.gpu_task_amount
        if not (amount > 0 and (amount <= 1 or amount.is_integer())):
            raise UsageError("--gpu-task-amount must be a fraction of at most 1 or a whole number of GPUs "
                             "(Spark's rule for task resource amounts)")
    if settings.progress not in PROGRESS_MODES:
        raise UsageError(f"--progress must be one of {', '.join(PROGRESS_MODES)}")
    if settings.progress_interval <= 0:
        raise UsageError("--progress-interval must be more than 0 seconds")
