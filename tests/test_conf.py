"""conf/: every file parses, every job argument list it holds passes the job's own parser, and the
Spark settings it holds obey Spark's GPU scheduling rules. A renamed flag breaks this build, not a
customer's cluster."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobs.cli import parse_settings, validate_model
from tests.conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
ENTRY_POINT = re.compile(r"(^|/)infer_dogs\.py$")


def spark_conf_file(path: Path) -> dict[str, str]:
    """A spark-defaults.conf: `key value` lines, # comments."""
    conf = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf[key] = value.strip()
    return conf


def job_entry(args: list[str]) -> str:
    return next(arg for arg in args if ENTRY_POINT.search(arg))


def split_submit(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """spark-submit arguments -> (--conf settings, the job's own arguments after the entry point)."""
    entry = args.index(job_entry(args))
    confs = {}
    for flag, value in zip(args[:entry], args[1:entry]):
        if flag == "--conf":
            key, _, setting = value.partition("=")
            confs[key] = setting
    return confs, args[entry + 1:]


def check_job_args(args: list[str], source: str) -> None:
    """The job's parser and validation accept them (input and output on S3, so no local checks)."""
    settings = parse_settings(args)
    validate_model(settings)
    assert settings.input.startswith(("s3://", "s3a://", "dbfs:/", "/Volumes/")), source
    assert settings.output.startswith(("s3://", "s3a://", "dbfs:/", "/Volumes/")), source


def check_spark_conf(conf: dict[str, str], source: str) -> None:
    """Keys are Spark's; GPU shares follow Spark's rules and waste neither cores nor GPUs."""
    assert conf and all(key.startswith("spark.") for key in conf), source
    task_gpu = conf.get("spark.task.resource.gpu.amount")
    if task_gpu is None:
        return
    task_gpu = float(task_gpu)
    assert task_gpu > 0 and (task_gpu <= 1 or task_gpu.is_integer()), (source, task_gpu)  # Spark 4's rule
    executor_gpus = conf.get("spark.executor.resource.gpu.amount")
    cores = conf.get("spark.executor.cores")
    if executor_gpus is not None and cores is not None:  # Databricks sets both from the node type
        tasks_by_gpu = int(executor_gpus) / task_gpu
        tasks_by_cpu = int(cores) / int(conf.get("spark.task.cpus", "1"))
        assert tasks_by_gpu == tasks_by_cpu, (source, tasks_by_gpu, tasks_by_cpu)
        assert conf["spark.executor.resource.gpu.discoveryScript"].endswith("/getGpusResources.sh"), source
    assert conf.get("spark.python.worker.reuse") == "true", source


def test_spark_defaults_files():
    local = spark_conf_file(CONF / "spark-defaults.local.conf")
    check_spark_conf(local, "spark-defaults.local.conf")
    gpu = spark_conf_file(CONF / "spark-defaults.gpu.conf")
    check_spark_conf(gpu, "spark-defaults.gpu.conf")
    assert float(gpu["spark.task.resource.gpu.amount"]) < 1  # the executor's tasks share its GPU


def test_databricks_bundle():
    bundle = yaml.safe_load((CONF / "databricks" / "databricks.yml").read_text())
    variables = {name: str(spec["default"]) for name, spec in bundle["variables"].items()}
    assert bundle["include"] == ["resources/*.yml"]
    resource_files = sorted((CONF / "databricks" / "resources").glob("*.yml"))
    jobs = [job for f in resource_files for job in yaml.safe_load(f.read_text())["resources"]["jobs"].values()]
    assert jobs
    for job in jobs:
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for task in job["tasks"]:
            cluster = clusters[task["job_cluster_key"]]
            assert re.fullmatch(r"\d+\.\d+\.x-gpu-ml-scala2\.13", cluster["spark_version"])  # GPU ML, Spark 4
            check_spark_conf(cluster["spark_conf"], "databricks")
            python_file = (resource_files[0].parent / task["spark_python_task"]["python_file"]).resolve()
            assert python_file == PROJECT_ROOT / "jobs" / "infer_dogs.py"
            params = [re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], p)
                      for p in task["spark_python_task"]["parameters"]]
            check_job_args(params, "databricks")
            wheel = (resource_files[0].parent / task["libraries"][0]["whl"]).resolve()
            assert wheel.parent == PROJECT_ROOT / "dist" and wheel.name.endswith(".whl")
    artifact = bundle["artifacts"]["infer_dogs_wheel"]
    assert (CONF / "databricks" / artifact["path"]).resolve() == PROJECT_ROOT
    assert artifact["build"] == "bash scripts/package.sh --wheel-only"


def test_emr_on_ec2_configurations_and_step():
    configurations = {c["Classification"]: c for c in json.loads((CONF / "emr" / "configurations.gpu.json").read_text())}
    assert configurations["yarn-site"]["Properties"]["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu"
    executor = {c["Classification"]: c["Properties"] for c in configurations["container-executor"]["Configurations"]}
    assert executor["gpu"]["module.enabled"] == "true"
    assert executor["cgroups"]["root"] == (
        configurations["yarn-site"]["Properties"]["yarn.nodemanager.linux-container-executor.cgroups.mount-path"])
    check_spark_conf(configurations["spark-defaults"]["Properties"], "emr spark-defaults")

    steps = json.loads((CONF / "emr" / "step.json").read_text())
    for step in steps:
        assert step["Jar"] == "command-runner.jar" and step["Args"][0] == "spark-submit"
        confs, job_args = split_submit(step["Args"])
        assert confs["spark.pyspark.python"] == "./environment/bin/python"
        assert confs["spark.archives"].endswith("/infer-dogs-env.tar.gz#environment")
        check_job_args(job_args, "emr step")


def test_emr_serverless_job_run_is_cpu_only():
    run = json.loads((CONF / "emr" / "serverless-job-run.json").read_text())
    submit = run["jobDriver"]["sparkSubmit"]
    assert ENTRY_POINT.search(submit["entryPoint"])
    check_job_args(submit["entryPointArguments"], "emr serverless")
    confs, _ = split_submit([*shlex.split(submit["sparkSubmitParameters"]), submit["entryPoint"]])
    check_spark_conf(confs, "emr serverless")
    assert not any("gpu" in key for key in confs)  # EMR Serverless has no GPUs
    assert "no GPUs" in run["tags"]["gpu"]
    # EMR Serverless refuses the request for any tag outside its TagKey/TagValue pattern (botocore's
    # emr-serverless service model): no commas, no semicolons.
    assert all(re.fullmatch(r"[A-Za-z0-9 /_.:=+@-]{1,256}", text) for tag in run["tags"].items() for text in tag)
    assert parse_settings(submit["entryPointArguments"]).precision == "fp32"


def test_kubernetes_submit_and_pod_template():
    printed = subprocess.run(["bash", str(CONF / "k8s" / "submit.sh"), "--input", "s3://b/dogs/", "--output",
                              "s3a://b/runs/1"], env={"PRINT_ONLY": "1", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, check=True).stdout
    args = shlex.split(printed)
    assert args[0] == "spark-submit" and args[args.index("--master") + 1].startswith("k8s://")
    confs, job_args = split_submit(args)
    check_spark_conf(confs, "k8s")
    assert confs["spark.executor.resource.gpu.vendor"] == "nvidia.com"
    check_job_args(job_args, "k8s")
    template = Path(confs["spark.kubernetes.executor.podTemplateFile"])
    pod = yaml.safe_load(template.read_text())
    assert pod["kind"] == "Pod" and pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    # A selector on a label that only GPU feature discovery sets leaves pods Pending on clusters with
    # the device plugin alone; the nvidia.com/gpu limit Spark adds already picks GPU nodes.
    assert "nodeSelector" not in pod["spec"]
    assert confs["spark.driver.memory"] == "4g"  # the driver imports torch and draws the report
    dockerfile = (CONF / "k8s" / "Dockerfile").read_text()
    # the build context is the repository: .dockerignore lets in only what the Dockerfile copies
    allowed = [line for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    assert allowed[0] == "*" and set(allowed[1:]) == {"!dist/", "!conf/getGpusResources.sh"}
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        assert all(part.startswith(("dist/", "conf/getGpusResources.sh")) for part in source.split()), source
    assert f"COPY dist/infer_dogs.py {job_entry(args).removeprefix('local://')}" in dockerfile
    assert f"COPY conf/getGpusResources.sh {confs['spark.executor.resource.gpu.discoveryScript']}" in dockerfile


@pytest.mark.parametrize("script", sorted(p.relative_to(PROJECT_ROOT).as_posix() for p in
                                          [*CONF.rglob("*.sh"), *(PROJECT_ROOT / "scripts").glob("*.sh")]))
def test_shell_scripts_parse_and_are_executable(script):
    path = PROJECT_ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert path.stat().st_mode & 0o111 or script.startswith("scripts/"), f"{script} must be executable"


def test_gpu_discovery_script(tmp_path):
    script = CONF / "getGpusResources.sh"
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    fake.chmod(0o755)
    found = subprocess.run([str(script)], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True,
                           text=True, check=True)
    assert json.loads(found.stdout) == {"name": "gpu", "addresses": ["0", "1"]}
    tools = tmp_path / "no-nvidia"
    tools.mkdir()
    for tool in ("bash", "hostname", "sed", "paste"):
        (tools / tool).symlink_to(shutil.which(tool))
    missing = subprocess.run([str(script)], env={"PATH": str(tools)}, capture_output=True, text=True)
    assert missing.returncode != 0 and "nvidia-smi not found" in missing.stderr


def test_every_conf_file_is_checked():
    """A new file in conf/ needs a check here."""
    checked = {"spark-defaults.local.conf", "spark-defaults.gpu.conf", "getGpusResources.sh",
               "databricks/databricks.yml", "databricks/resources/infer_dogs.job.yml",
               "emr/configurations.gpu.json", "emr/step.json", "emr/serverless-job-run.json", "emr/bootstrap.sh",
               "k8s/submit.sh", "k8s/gpu-executor-pod-template.yaml", "k8s/Dockerfile"}
    present = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*") if p.is_file()}
    assert present == checked
