"""The job on a real multi-process Spark cluster on this machine, and GPU scheduling without GPUs.

`local-cluster[N,C,M]` starts a standalone master and N workers inside the driver's JVM; each
executor is its own JVM with its own Python workers, as on a real cluster. A second SparkContext
cannot live beside the session fixture, so the job runs with `spark-submit` in a subprocess.
Its workers put executor folders (logs, shipped files) under $SPARK_HOME/work whatever
spark.worker.dir says, so each run gets its own SPARK_HOME: links to pyspark's bin/, jars/, python/.

Who read which S3 object is recorded by a second endpoint onto the same in-process moto backend:
the driver and the executors send different boto3 app ids (AWS_SDK_UA_APP_ID) in their
User-Agent, so the log tells driver requests from executor requests.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyspark
import pytest

from tests.conftest import PROJECT_ROOT, TEST_BUCKET, TEST_PREFIX, free_port, s3_client_for
from tests.helpers import read_per_class, read_predictions, read_summary, run_in_process
from tests.reference import make_spread_weights
from tests.test_spark_submit import subprocess_env

MODEL = "mobilenet_v3_small"
PYSPARK_HOME = Path(pyspark.__file__).parent
FAKE_GPUS = PROJECT_ROOT / "tests" / "fake_gpus.sh"
DRIVER_APP, EXECUTOR_APP = "infer-dogs-driver", "infer-dogs-executor"
WEIGHTS_KEY = "weights/mobilenet_v3_small-spread.pt"
QUIET = ["--progress", "off", "--no-report"]  # neither is under test here


@dataclass
class S3Log:
    endpoint: str
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (client app id, method, key)

    def count(self, client: str, method: str, keys: set[str]) -> Counter:
        return Counter(k for c, m, k in self.requests if c == client and m == method and k in keys)


@pytest.fixture(scope="module")
def s3_log(s3_images):
    """A recording endpoint onto the moto backend that already holds the sample images."""
    from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    log = S3Log("")
    app = DomainDispatcherApplication(create_backend_app)

    def recording(environ, start_response):
        agent = environ.get("HTTP_USER_AGENT", "")
        client = next((part[4:] for part in agent.split() if part.startswith("app/")), "")
        key = unquote(environ.get("PATH_INFO", "")).removeprefix(f"/{TEST_BUCKET}/")
        log.requests.append((client, environ["REQUEST_METHOD"], key))
        return app(environ, start_response)

    server = make_server("127.0.0.1", free_port(), recording, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    log.endpoint = f"http://127.0.0.1:{server.server_port}"
    yield log
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def weights_file(sample_images, tmp_path_factory) -> Path:
    """Seeded test weights with varied predictions (tests/reference.py)."""
    return make_spread_weights(MODEL, 11, sample_images.files(), tmp_path_factory.mktemp("w") / "spread.pt")


@pytest.fixture(scope="module")
def weights_uri(s3_server, s3_images, weights_file) -> str:
    """The same weights as an object in the test bucket."""
    s3_client_for(s3_server).upload_file(str(weights_file), TEST_BUCKET, WEIGHTS_KEY)
    return f"s3://{TEST_BUCKET}/{WEIGHTS_KEY}"


@dataclass
class Submitted:
    driver_pid: int  # spark-submit execs the driver JVM: the pid Popen started
    stdout: str
    stderr: str


def spark_submit(master: str, work: Path, spark_conf: dict[str, str], job_args: list[str],
                 properties_file: Path | None = None, env: dict[str, str] | None = None) -> Submitted:
    """Run jobs/infer_dogs.py with spark-submit, with SPARK_HOME `work`/spark-home (see above)."""
    spark_home = work / "spark-home"
    spark_home.mkdir()
    for name in ("bin", "jars", "python"):
        (spark_home / name).symlink_to(PYSPARK_HOME / name)
    conf = {
        "spark.ui.enabled": "false",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",  # wait for every executor before scoring
        "spark.executorEnv.AWS_SDK_UA_APP_ID": EXECUTOR_APP,
        **spark_conf,
    }
    command = [str(spark_home / "bin" / "spark-submit"), "--master", master]
    if properties_file:
        command += ["--properties-file", str(properties_file)]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command += [str(PROJECT_ROOT / "jobs" / "infer_dogs.py"), *job_args]
    env = {**subprocess_env(), "SPARK_HOME": str(spark_home), "AWS_SDK_UA_APP_ID": DRIVER_APP, **(env or {})}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=work) as process:
        try:
            stdout, stderr = process.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-4000:]
    return Submitted(process.pid, stdout, stderr)


def by_executor(workers: list[dict]) -> dict[int, list[dict]]:
    """summary.json's Python workers grouped by the pid of the executor JVM that owns them."""
    grouped = defaultdict(list)
    for worker in workers:
        grouped[worker["executor_pid"]].append(worker)
    return dict(grouped)


def executor_logs(work: Path) -> list[str]:
    """The stderr of every executor of the run (standalone work dir: app-*/<executor id>/stderr)."""
    return [p.read_text(errors="replace") for p in sorted((work / "spark-home" / "work").glob("app-*/*/stderr"))]


def assert_same_predictions(cluster, local) -> None:
    assert list(cluster["path"]) == list(local["path"])
    exact = ["image_id", "wnid", "label", "pred_index", "pred_wnid", "pred_label", "correct", "top5_correct",
             "error", "error_kind", "model", "weights_sha256"]
    for column in exact:
        assert cluster[column].equals(local[column]), column
    assert [list(x) for x in cluster["top_k_indices"]] == [list(x) for x in local["top_k_indices"]]
    np.testing.assert_allclose(np.stack(cluster["top_k_probs"]), np.stack(local["top_k_probs"]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(cluster["pred_prob"], local["pred_prob"], rtol=0, atol=1e-6)


FAKE_GPU_CONF = {  # each worker has one fake GPU (tests/fake_gpus.sh); CUDA being absent, tasks use the CPU
    "spark.worker.resource.gpu.amount": "1",
    "spark.worker.resource.gpu.discoveryScript": str(FAKE_GPUS),
    "spark.executor.resource.gpu.discoveryScript": str(FAKE_GPUS),
}


def assert_each_executor_used_its_own_fake_gpu(summary: dict, work: Path, shared_gpu: bool) -> None:
    """Each executor's Python workers all used its one GPU and built the model once each. How many
    workers an executor starts is the scheduler's choice (a task may start before a finished one's
    worker is back in the pool), so it is not counted; with `shared_gpu`, some executor ran two
    workers, which happens only when two of its tasks ran at once, on its one GPU."""
    workers = summary["workers"]
    executors = by_executor(workers)
    assert len(executors) == 2, workers
    seen = {pid: {a for w in on_executor for a in w["gpu_addresses"]} for pid, on_executor in executors.items()}
    assert sorted(sorted(addresses) for addresses in seen.values()) == [["0"], ["1"]], seen
    assert all(w["devices"] == ["cpu"] and w["model_builds"] == 1 for w in workers), workers
    assert summary["model_builds"] == len(workers)
    if shared_gpu:
        assert max(len(on_executor) for on_executor in executors.values()) >= 2, workers
    assert summary["devices"] == ["cpu"]
    # each executor's tasks logged which fake GPU they got and that they fell back to the CPU
    logs = executor_logs(work)
    assigned = sorted(sorted(set(re.findall(r"Spark assigned GPU \['(\d+)'\] but CUDA is not available", log)))
                      for log in logs)
    assert assigned == [["0"], ["1"]], assigned


@pytest.mark.slow
def test_two_executors_with_a_fake_gpu_each_match_local_mode(spark, s3_server, s3_images, s3_log, weights_uri,
                                                              sample_images, tmp_path):
    """Two executor JVMs, one core and one fake GPU each, which only the scoring stage asks for
    (--gpu-stage-only, a GPU per task): each executor's worker gets its own GPU, reads its images
    from S3 itself and gives the predictions local mode gives. (One cluster run for both claims:
    each run costs ~50 s of JVMs and torch imports on two cores.)"""
    images = sample_images.files()
    image_keys = {TEST_PREFIX + f.relative_to(sample_images.images_dir).as_posix() for f in images}
    args = ["--input", s3_images, "--model", MODEL, "--weights", weights_uri, "--batch-size", "8", *QUIET]

    started = len(s3_log.requests)
    submitted = spark_submit(
        "local-cluster[2,1,1024]", tmp_path,
        {**FAKE_GPU_CONF, "spark.executor.memory": "768m",  # executor memory fits the 1024 MB workers
         "spark.executor.cores": "1", "spark.cores.max": "2", "spark.executor.resource.gpu.amount": "1"},
        [*args, "--s3-endpoint-url", s3_log.endpoint, "--output", str(tmp_path / "cluster"),
         "--gpu-stage-only", "--gpu-task-amount", "1"],
        env={"FAKE_GPU_STATE": str(tmp_path / "fake-gpus")},  # the workers run the discovery script
    )
    requests = S3Log(s3_log.endpoint, s3_log.requests[started:])
    summary = read_summary(tmp_path / "cluster")
    assert summary["spark"]["master"] == "local-cluster[2,1,1024]"
    print("timings", summary["timing_s"], "\nworkers", summary["workers"])

    # the same predictions as local mode, image by image
    run_in_process(spark, [*args, "--s3-endpoint-url", s3_server, "--output", str(tmp_path / "local")])
    assert_same_predictions(read_predictions(tmp_path / "cluster"), read_predictions(tmp_path / "local"))
    pd.testing.assert_frame_equal(read_per_class(tmp_path / "cluster").sort_values("wnid", ignore_index=True),
                                  read_per_class(tmp_path / "local").sort_values("wnid", ignore_index=True),
                                  check_exact=False, atol=1e-6)

    # two executor JVMs (not the driver), each executor's workers on its own GPU, each built the model once
    assert_each_executor_used_its_own_fake_gpu(summary, tmp_path, shared_gpu=False)
    assert submitted.driver_pid not in by_executor(summary["workers"])
    for worker in summary["workers"]:
        assert worker["tasks"] >= 1 and worker["images"] >= 1  # both executors scored
    assert sum(w["images"] for w in summary["workers"]) == len(images)
    assert "scoring stage asks for 1.0 GPU per task" in submitted.stdout  # the driver's log (PythonRunner)

    # bytes were read on the executors: every image once by an executor; the driver sent no request for any
    assert [r for r in requests.requests if r[0] == DRIVER_APP and r[2] in image_keys] == []
    assert requests.count(EXECUTOR_APP, "GET", image_keys) == Counter({key: 1 for key in image_keys})
    # the driver listed the bucket and fetched the weights (ranged GETs); executors got them from Spark
    assert requests.count(DRIVER_APP, "GET", {WEIGHTS_KEY})[WEIGHTS_KEY] >= 1
    assert requests.count(EXECUTOR_APP, "GET", {WEIGHTS_KEY}) == Counter()
    assert any(c == DRIVER_APP and m == "GET" and k in ("", "/" + TEST_BUCKET) for c, m, k in requests.requests)


@pytest.mark.slow
def test_the_shipped_gpu_conf_shares_each_fake_gpu_between_two_tasks(sample_images, weights_file, tmp_path):
    """conf/spark-defaults.gpu.conf sized for this machine: two workers with one fake GPU each, two
    cores per executor and 0.5 GPU per task in every stage, so two tasks share an executor's GPU."""
    conf = {**FAKE_GPU_CONF, "spark.executor.memory": "768m",
            "spark.executor.cores": "2", "spark.cores.max": "4", "spark.task.resource.gpu.amount": "0.5"}
    args = ["--input", str(sample_images.images_dir), "--output", str(tmp_path / "run"), "--model", MODEL,
            "--weights", str(weights_file), "--batch-size", "8", *QUIET]
    spark_submit("local-cluster[2,2,1536]", tmp_path, conf, args, PROJECT_ROOT / "conf" / "spark-defaults.gpu.conf",
                 env={"FAKE_GPU_STATE": str(tmp_path / "fake-gpus")})
    summary = read_summary(tmp_path / "run")
    assert summary["counts"]["images"] == len(sample_images.files()) and summary["counts"]["errors"] == 0
    print("timings", summary["timing_s"], "\nworkers", summary["workers"])
    assert_each_executor_used_its_own_fake_gpu(summary, tmp_path, shared_gpu=True)
