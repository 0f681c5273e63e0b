"""Per-task records sent from executors back to the driver through a Spark accumulator.

Each scoring task adds one record: which process and host ran it, which GPU address Spark
assigned and which torch device was used, whether it built the model, how many images and
errors it had, and how long it spent on the model and waiting for decode. The driver turns
the records into the summary's worker report and inference-stage timing. Only successful task
attempts' updates count (Spark's accumulator semantics for actions).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pyspark.accumulators import AccumulatorParam


class RecordListParam(AccumulatorParam):
    """An accumulator of plain dicts (JSON-able records)."""

    def zero(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return []

    def addInPlace(self, left: list[dict[str, Any]], right: list[dict[str, Any]]) -> list[dict[str, Any]]:
        left.extend(right)
        return left


def process_identity() -> dict[str, Any]:
    """Host, Python worker pid, and the pid of the executor JVM that owns the worker."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "executor_pid": executor_pid()}


def executor_pid() -> int:
    """The nearest ancestor that is a JVM (the executor; the driver in local mode)."""
    pid = os.getppid()
    for _ in range(4):
        try:
            with open(f"/proc/{pid}/comm") as handle:
                if handle.read().strip() == "java":
                    return pid
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return os.getppid()
