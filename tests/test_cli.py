"""CLI: flags and config files -> Settings; bad input -> one line and exit code 2, before Spark (or,
for what only Spark can check, such as a file where OUTPUT should be, before any image is scored)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

import jobs.infer_dogs
import jobs.run
from jobs.cli import UsageError, build_parser, parse_settings
from jobs.infer_dogs import main
from tests.test_security import SessionThatStaysUp


def test_flags_become_settings(tmp_path):
    settings = parse_settings(["--input", str(tmp_path), "--output", "out", "--model", "mobilenet_v3_small",
                               "--batch-size", "4", "--top-k", "3", "--limit", "10", "--s3-anonymous",
                               "--s3-endpoint-url", "http://127.0.0.1:9", "--mode", "overwrite"])
    assert (settings.model, settings.batch_size, settings.top_k, settings.limit) == ("mobilenet_v3_small", 4, 3, 10)
    assert settings.s3.anonymous and settings.s3.endpoint_url == "http://127.0.0.1:9"
    assert settings.mode == "overwrite"
    assert parse_settings(["--input", str(tmp_path), "--output", "o"]).batch_size is None  # per device


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_file_with_cli_winning(tmp_path, suffix):
    config = tmp_path / f"job{suffix}"
    if suffix == ".json":
        config.write_text(json.dumps({"input": str(tmp_path), "output": "o", "batch-size": 7, "top_k": 2}))
    else:
        config.write_text(f'input = "{tmp_path}"\noutput = "o"\nbatch_size = 7\ntop_k = 2\n')
    settings = parse_settings(["--config", str(config), "--top-k", "4"])
    assert settings.batch_size == 7 and settings.top_k == 4 and settings.input == str(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["--output", "o"], "--input is required"),
    (["--input", "/no/such/folder", "--output", "o"], "input folder not found"),
    (["--input", ".", "--output", "o", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--input", ".", "--output", "o", "--weights", "w.pt", "--random-weights", "1"], "exclude each other"),
    (["--input", ".", "--output", "o", "--mode", "append"], "invalid choice"),
    (["--input", ".", "--output", "o", "--batch-size", "many"], "invalid int value"),
    (["--input", "s3://", "--output", "o"], "--input: S3 URI without a bucket: 's3://'"),
    (["--input", "s3:///dogs/", "--output", "o"], "--input: S3 URI without a bucket"),
    (["--input", ".", "--output", "s3a:///runs/1"], "--output: S3 URI without a bucket"),
    (["--input", ".", "--output", "o", "--weights", "s3://"], "--weights: S3 URI without a bucket"),
    (["--input", ".", "--output", "o", "--weights", "/no/such/weights.pt"], "weights file not found: /no/such/"),
    (["--input", ".", "--output", "o", "--s3-max-attempts", "0"], "--s3-max-attempts must be at least 1"),
    (["--input", ".", "--output", "o", "--s3-retry-budget", "-1"], "--s3-retry-budget must be at least 0 seconds"),
    (["--input", ".", "--output", "o", "--s3-retry-mode", "standard"], "unrecognized arguments: --s3-retry-mode"),
])
def test_bad_arguments_raise_usage_error(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_settings(argv)


class StoppedSpark:
    def __init__(self):
        self.stopped = False

    def stop(self):
        self.stopped = True


def test_unknown_model_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    """With weights or classes to fetch, the name is checked before Spark starts; with random weights,
    once torchvision is imported (beside Spark's start). Either way before OUTPUT is touched, in one
    line that names the close matches."""
    import jobs.infer_dogs as infer_dogs

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    started = []

    def start_spark(settings):
        started.append(StoppedSpark())
        return started[-1]

    monkeypatch.setattr(infer_dogs, "start_spark", start_spark)
    argv = ["--input", str(tmp_path / "images"), "--output", str(tmp_path / "o"), "--model", "resnet9000"]
    message = "infer-dogs: error: unknown torchvision classification model 'resnet9000': did you mean resnet50"
    assert main(argv) == 2
    assert not started and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.strip().startswith(message)
    assert main([*argv, "--random-weights", "0"]) == 2
    assert len(started) == 1 and started[0].stopped and not (tmp_path / "o").exists()
    assert capsys.readouterr().err.strip().startswith(message)
    assert main([*argv, "--dry-run"]) == 2  # the dry run checks it too, without Spark
    assert capsys.readouterr().err.strip().startswith(message)
    assert len(started) == 1


def test_unknown_config_key_is_refused(tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"input": ".", "output": "o", "batchsize": 3}))
    with pytest.raises(UsageError, match="unknown key"):
        parse_settings(["--config", str(config)])


@pytest.mark.parametrize("entry, message", [
    ({"dry_run": "false"}, "dry_run in .* must be true or false, not 'false'"),  # a string would count as on
    ({"top_k": 2.5}, "top_k in .* must be a whole number, not 2.5"),
    ({"batch_size": True}, "batch_size in .* must be a whole number, not True"),
    ({"s3_read_timeout": "60"}, "s3_read_timeout in .* must be a number"),
    ({"mode": "append"}, "mode in .* must be one of error, overwrite"),
    ({"model": 50}, "model in .* must be a string"),
])
def test_config_values_are_checked_like_flags(tmp_path, entry, message):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"input": str(tmp_path), "output": "o", **entry}))
    with pytest.raises(UsageError, match=message):
        parse_settings(["--config", str(config)])


def test_config_takes_flag_names_and_setting_names(tmp_path):
    config = tmp_path / "c.toml"

    def parsed(text):
        config.write_text(f'input = "{tmp_path}"\noutput = "o"\n{text}\n')
        return parse_settings(["--config", str(config)])

    assert parsed("no_report = true").report is False
    assert parsed("no-report = false").report is True
    assert parsed("report = false").report is False
    assert parsed("no_channels_last = true").channels_last is False
    assert parsed("dry_run = true").dry_run is True
    assert parsed("s3_read_timeout = 5").s3.read_timeout_s == 5.0


def test_main_exits_2_with_one_line_before_spark(capsys):
    assert main(["--input", "/no/such/folder", "--output", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["infer-dogs: error: input folder not found: /no/such/folder"]


def test_empty_input_folder_exits_2(tmp_path, capsys):
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_console_script_usage_error_in_subprocess():
    result = subprocess.run([sys.executable, "-m", "jobs.infer_dogs", "--input", ".", "--output", "o", "--top-k", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "infer-dogs: error: --top-k must be at least 1"
    assert "Traceback" not in result.stderr


def test_command_line_flushes_its_output_before_the_fast_exit(tmp_path):
    """The entry point ends with os._exit (no interpreter teardown): stdout must be complete and the
    exit code kept, also when stdout is a pipe."""
    (tmp_path / "n02085620-Chihuahua").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "n02085620-Chihuahua" / "a.jpg")
    result = subprocess.run([sys.executable, "-m", "jobs.infer_dogs", "--input", str(tmp_path), "--output",
                             str(tmp_path / "o"), "--dry-run", "--model", "mobilenet_v3_small"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Chihuahua" in result.stdout and result.stdout.endswith("\n")


def test_databricks_driver_exits_normally(monkeypatch):
    from jobs.infer_dogs import exit_process

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    with pytest.raises(SystemExit) as exited:
        exit_process(2)
    assert exited.value.code == 2


def test_help_lists_every_flag():
    text = build_parser().format_help()
    for flag in ("--input", "--output", "--model", "--weights", "--random-weights", "--batch-size", "--top-k",
                 "--limit", "--s3-endpoint-url", "--s3-anonymous", "--mode", "--config"):
        assert flag in text


@pytest.mark.parametrize("blocked", ["a-file", "a-file/run"])
def test_an_output_that_cannot_be_written_is_refused_before_scoring(spark, sample_images, tmp_path, monkeypatch,
                                                                    capfd, blocked):
    """A file where OUTPUT (or a parent of it) should be: exit 2 with one line, found when OUTPUT is
    prepared, not by every scoring task failing on its first write (Spark's retries re-score)."""
    (tmp_path / "a-file").write_text("not a folder")
    scored = []
    monkeypatch.setattr(jobs.run, "score_images", lambda *args, **kwargs: scored.append(args))
    monkeypatch.setattr(jobs.infer_dogs, "start_spark", lambda settings: SessionThatStaysUp(spark))

    code = jobs.infer_dogs.main(["--input", str(sample_images.images_dir), "--output", str(tmp_path / blocked),
                                 "--model", "mobilenet_v3_small", "--random-weights", "0"])
    error = capfd.readouterr().err
    assert code == 2 and not scored
    [line] = [line for line in error.splitlines() if line.startswith("infer-dogs: error:")]
    assert line.startswith(f"infer-dogs: error: cannot write to --output {tmp_path / blocked}: org.apache.hadoop")
    assert error.rstrip().endswith(line) and "Traceback" not in error
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.parametrize("output_form", ["plain", "file-uri"])
def test_a_local_output_holding_a_run_is_refused_before_spark(sample_images, tmp_path, monkeypatch, capsys,
                                                             output_form):
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    monkeypatch.setattr(jobs.infer_dogs, "start_spark", lambda settings: pytest.fail("Spark was started"))
    output = str(run) if output_form == "plain" else f"file://{run}"
    argv = ["--input", str(sample_images.images_dir), "--output", output, "--random-weights", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"infer-dogs: error: {output} already holds a run (summary.json, predictions); use --mode "
                   "overwrite to replace it or choose another --output"]
    (run / "summary.json").unlink()  # a killed run: the message names --resume
    assert main(argv) == 2
    assert "already holds an incomplete run (predictions); use --resume to finish it" in capsys.readouterr().err
