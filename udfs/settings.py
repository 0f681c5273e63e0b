"""The run's settings: one frozen value built on the driver and shipped to every executor.

The driver (`jobs/cli.py`) builds a `Settings` from the command line and an optional config
file, validates it once, and passes it down; the scoring UDF closes over it, so executors see
exactly the same value. It lives on the executor side of the split because executors must be
able to unpickle it; nothing here reads the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # udfs.model_source imports torch; Settings is built before torch is imported
    from udfs.model_source import ModelSource

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
GRAPH_MODES = ("auto", "eager", "torchscript", "compile")
WRITE_MODES = ("error", "overwrite")
PROGRESS_MODES = ("auto", "bar", "log", "off")


@dataclass(frozen=True)
class S3Options:
    """How executors and the driver talk to S3 (boto3 client settings, udfs.s3_retry's limits)."""

    endpoint_url: Optional[str] = None
    anonymous: bool = False
    region: Optional[str] = None
    max_attempts: int = 20  # per request, the first included
    retry_budget_s: float = 120.0  # per request: no retry starts later than this after the first attempt
    backoff_base_s: float = 0.2  # the first retry waits up to this long, each later one up to twice as long ...
    backoff_cap_s: float = 20.0  # ... but never longer than this
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_pool_connections: int = 32


@dataclass(frozen=True)
class WeightsSource:
    """Where the model's parameters come from, resolved on the driver.

    `file_name` is the name under which the driver shipped the state dict with
    `SparkContext.addFile`; executors find it with `SparkFiles.get`. `sha256` is the hash of
    that file and is part of every output row.
    """

    kind: str  # "default" (torchvision's), "file" (--weights) or "random" (--random-weights)
    description: str
    sha256: str
    file_name: str
    seed: Optional[int] = None
    driver_path: str = ""  # where the driver keeps the file it ships (driver-only)

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


@dataclass(frozen=True)
class Settings:
    """Everything one run needs, on the driver and on the executors."""

    input: str
    output: str
    model: str = "resnet50"
    weights: Optional[str] = None
    random_weights: Optional[int] = None
    batch_size: Optional[int] = None  # None: per device, udfs.model.resolve_batch_size
    arrow_batch_size: Optional[int] = None  # None: as submitted to Spark, else 256 (jobs.spark_session)
    top_k: int = 5
    limit: Optional[int] = None
    mode: str = "error"
    resume: bool = False  # driver-only: keep OUTPUT's committed predictions, score the rest (jobs/resume.py)
    commit_every: int = 10_000  # driver-only: images per committed chunk of predictions
    label_map: Optional[str] = None
    classes: Optional[str] = None  # --classes FILE: the model's classes in index order (udfs.labels.read_class_list)
    precision: str = "auto"
    channels_last: bool = True
    graph: str = "auto"
    gpu_decode: bool = False
    decode_threads: int = 4
    torch_threads: Optional[int] = None
    max_image_bytes: int = 64 * 1024 * 1024
    tasks_per_slot: int = 3
    master: Optional[str] = None
    gpu_stage_only: bool = False  # driver-only: a ResourceProfile for the scoring stage
    gpu_task_amount: Optional[float] = None
    # Driver-only: how the run talks to the person running it (jobs/progress.py, jobs/report.py).
    dry_run: bool = False
    verbose: int = 0
    progress: str = "auto"
    progress_interval: float = 30.0  # seconds
    report: bool = True
    s3: S3Options = field(default_factory=S3Options)
    model_source: Optional["ModelSource"] = None  # `model` resolved on the driver (udfs.model_source)
    weights_source: Optional[WeightsSource] = None
    run_id: str = ""

    def with_model_source(self, source: "ModelSource") -> "Settings":
        return replace(self, model_source=source)

    def with_weights_source(self, source: WeightsSource) -> "Settings":
        return replace(self, weights_source=source)

    def with_run_id(self, run_id: str) -> "Settings":
        return replace(self, run_id=run_id)

    def with_arrow_batch_size(self, arrow_batch_size: int) -> "Settings":
        return replace(self, arrow_batch_size=arrow_batch_size)
