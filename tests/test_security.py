"""Security and hygiene: pickled code in a checkpoint is refused (exit code 2) before OUTPUT is
touched; credentials never reach logs, even boto3's debug log; no shell, no eval, and every
torch.load is weights_only.

Other tests scan what they capture for the test secret too: the killed-task run's whole output
(tests/test_resume.py), the bad-input runs' summaries and error rows (tests/test_bad_inputs.py),
and the unreachable-S3 and missing-bucket errors (tests/test_s3_faults.py).
"""

from __future__ import annotations

import ast
import logging
import pathlib
from pathlib import Path

import pytest
import torch

import jobs.infer_dogs
from jobs.listing import list_s3
from tests.conftest import PROJECT_ROOT, TEST_SECRET
from udfs.settings import S3Options
from udfs.storage import read_bytes

PRODUCTION_CODE = ["jobs", "udfs", "scripts"]


class PickledCode:
    """Unpickling this runs `Path.touch(marker)`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


class SessionThatStaysUp:
    """The test session for `main()`, which stops its session when done."""

    def __init__(self, spark):
        self._spark = spark

    def stop(self) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._spark, name)


def test_a_checkpoint_with_pickled_code_is_refused_before_output_is_touched(spark, sample_images, tmp_path,
                                                                             monkeypatch, capfd):
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(2), "payload": PickledCode(marker)}, checkpoint)
    out = tmp_path / "run"
    (out / "predictions").mkdir(parents=True)  # an earlier run that --mode overwrite would replace
    (out / "summary.json").write_text("{}")
    monkeypatch.setattr(jobs.infer_dogs, "start_spark", lambda settings: SessionThatStaysUp(spark))

    code = jobs.infer_dogs.main(["--input", str(sample_images.images_dir), "--output", str(out),
                                 "--model", "mobilenet_v3_small", "--weights", str(checkpoint), "--mode", "overwrite"])
    error = capfd.readouterr().err
    assert code == 2
    [line] = [line for line in error.splitlines() if line.startswith("infer-dogs: error:")]
    assert "cannot load weights" in line and "pickled objects or code" in line and "weights_only=True" in line
    assert error.rstrip().endswith(line)  # one line, the last
    assert not marker.exists()  # the pickled code never ran
    assert (out / "summary.json").read_text() == "{}" and (out / "predictions").is_dir()  # nothing cleared


def test_credentials_stay_out_of_debug_logs(s3_server, s3_images, caplog):
    for name in (None, "botocore", "boto3", "s3transfer", "urllib3"):  # the job quiets these
        caplog.set_level(logging.DEBUG, logger=name)
    options = S3Options(endpoint_url=s3_server)
    uri = next(iter(list_s3(s3_images, options)))[0]
    read_bytes(uri, options, 1 << 30)
    with pytest.raises(Exception):
        read_bytes(uri + "-missing", options, 1 << 30)
    assert "Authorization" in caplog.text or "Signature" in caplog.text  # the debug log is on
    assert TEST_SECRET not in caplog.text


def python_files() -> list[Path]:
    return sorted(p for folder in PRODUCTION_CODE for p in (PROJECT_ROOT / folder).rglob("*.py"))


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_shell_no_eval_and_torch_load_is_weights_only():
    problems = []
    for file in python_files():
        for node, name in calls(ast.parse(file.read_text(), filename=str(file))):
            where = f"{file.relative_to(PROJECT_ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "os.system", "os.popen", "pickle.load", "pickle.loads"):
                problems.append(f"{where}: {name}()")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                problems.append(f"{where}: shell=...")
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
    assert python_files() and not problems, "\n".join(problems)

