"""The predictor: one bad image is one error row; the model is built once per Python worker."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import read_predictions, run_in_process, scoring_settings
from tests.reference import make_spread_weights, model_from_file, reference_probabilities
from udfs.decode import normalize_batch
from udfs.model import load_model, optimize_graph
from udfs.model_source import resolve_model_source
from udfs.predictor import Predictor, resolve_precision

MODEL = "mobilenet_v3_small"
SOURCE = resolve_model_source(MODEL)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, sample_images):
    return make_spread_weights(MODEL, 11, sample_images.files(), tmp_path_factory.mktemp("w") / "w.pt")


def frame(paths) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "image_id": [p.stem for p in paths],
                         "wnid": [p.parent.name.split("-")[0] for p in paths],
                         "label": [p.parent.name for p in paths], "size_bytes": [p.stat().st_size for p in paths]})


def test_a_broken_image_is_one_error_row_and_the_rest_are_scored(sample_images, weights, tmp_path):
    good = sample_images.files()[:7]
    broken = tmp_path / "n02085620-Chihuahua" / "n02085620_broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(good[0].read_bytes()[:600])  # truncated JPEG
    paths = good[:3] + [broken] + good[3:]
    settings = scoring_settings(model=MODEL, batch_size=4)
    predictor = Predictor(settings, torch.device("cpu"), load_model(SOURCE, weights, torch.device("cpu"), True))
    out = predictor(frame(paths))

    assert len(out) == len(paths)
    assert out["path"].tolist() == [str(p) for p in paths]
    errors = out[out["error"].notna()]
    assert errors["path"].tolist() == [str(broken)]
    assert errors["error_kind"].tolist() == ["decode_error"]
    assert errors[["pred_index", "pred_prob", "correct", "top_k_indices"]].isna().all().all()
    assert "0x" not in errors["error"].iloc[0]  # no object reprs in messages

    reference = reference_probabilities(model_from_file(MODEL, weights), MODEL, good)
    for row in out[out["error"].isna()].itertuples():
        probs = reference[row.path]
        np.testing.assert_allclose(row.top_k_probs, probs[list(row.top_k_indices)].numpy(), atol=1e-4)
        assert row.pred_prob == pytest.approx(float(probs.max()), abs=1e-4)


def test_a_truth_the_model_cannot_predict_is_no_truth(sample_images, weights):
    """A folder wnid outside the model's classes (or a made-up one) counts in no accuracy: its images
    are not certain mistakes. Images of the model's own classes keep theirs."""
    files = sample_images.files()[:4]
    images = frame(files)
    images.loc[:1, "wnid"] = ["n99999999", "n00000001"]
    settings = scoring_settings(model=MODEL, batch_size=4)
    predictor = Predictor(settings, torch.device("cpu"), load_model(SOURCE, weights, torch.device("cpu"), True))
    out = predictor(images)
    assert out["correct"].isna().tolist() == [True, True, False, False]
    assert out["top5_correct"].isna().tolist() == [True, True, False, False]
    assert out["wnid"].tolist()[:2] == ["n99999999", "n00000001"]  # the folder's truth is kept as listed


def test_stream_of_batches_keeps_order_and_rows(sample_images, weights):
    files = sample_images.files()[:10]
    settings = scoring_settings(model=MODEL, batch_size=3)
    predictor = Predictor(settings, torch.device("cpu"), load_model(SOURCE, weights, torch.device("cpu"), True))
    batches = [frame(files[i:i + 4]) for i in range(0, len(files), 4)]
    outputs = list(predictor.predict_batches(iter(batches)))
    assert [len(o) for o in outputs] == [4, 4, 2]
    assert pd.concat(outputs)["path"].tolist() == [str(p) for p in files]
    assert predictor.stats.images == 10 and predictor.stats.errors == 0


def test_an_image_scores_the_same_whatever_shares_its_batch(sample_images, weights):
    """On CPU short batches are padded to the model batch: alone, first or last among others, an image's
    probabilities are bit for bit the same (the fused CPU graph picks kernels per shape)."""
    files = sample_images.files()[:9]
    settings = scoring_settings(model=MODEL, batch_size=4)
    cpu = torch.device("cpu")
    predictor = Predictor(settings, cpu, optimize_graph(load_model(SOURCE, weights, cpu, True), "auto", cpu, 4, (224,), True))
    alone = predictor(frame(files[8:9])).iloc[0]
    last = predictor(frame(files[5:9])).iloc[-1]
    after_a_full_batch = predictor(frame(files[:9])).iloc[-1]  # a batch of 4, 4, then 1
    for other in (last, after_a_full_batch):
        assert other["path"] == alone["path"]
        assert other["top_k_probs"] == alone["top_k_probs"] and other["pred_prob"] == alone["pred_prob"]


def test_precision_resolution(monkeypatch):
    import udfs.model

    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("auto", torch.device("cuda", 0)) is torch.float16
    monkeypatch.setattr(udfs.model, "cpu_runs_bf16_natively", lambda: True)
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(udfs.model, "cpu_runs_bf16_natively", lambda: False)  # AVX2: bf16 8.6x slower than fp32
    assert resolve_precision("bf16", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cuda", 0)) is torch.bfloat16
    assert resolve_precision("fp16", torch.device("cpu")) is None  # GPU settings on a CPU executor: fp32
    assert resolve_precision("fp16", torch.device("cuda", 0)) is torch.float16


def test_reduced_precision_is_traced_into_the_frozen_graph(weights):
    """--precision bf16 on CPU: the TorchScript graph is traced under autocast, so it runs bf16
    kernels (a graph traced in fp32 ignores autocast's speed-up); results match eager autocast."""
    cpu = torch.device("cpu")
    prep = SOURCE.preprocessing
    images = torch.randint(0, 256, (4, 3, 224, 224), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    inputs = normalize_batch(images, prep, torch.float32).contiguous(memory_format=torch.channels_last)
    eager = load_model(SOURCE, weights, cpu, True)
    bf16_graph = optimize_graph(load_model(SOURCE, weights, cpu, True), "torchscript", cpu, 4, (224,), True, torch.bfloat16)
    fp32_graph = optimize_graph(load_model(SOURCE, weights, cpu, True), "torchscript", cpu, 4, (224,), True)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = eager(inputs).float().softmax(1)
        got = bf16_graph(inputs)
    assert "BFloat16" in str(bf16_graph.graph) and "BFloat16" not in str(fp32_graph.graph)
    torch.testing.assert_close(got.float().softmax(1), expected, atol=5e-2, rtol=0)  # bf16 keeps ~3 digits
    assert torch.equal(got.float().argmax(1), expected.argmax(1))


def graph_inputs(batch: int) -> torch.Tensor:
    prep = SOURCE.preprocessing
    images = torch.randint(0, 256, (batch, 3, 224, 224), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    return normalize_batch(images, prep, torch.float32).contiguous(memory_format=torch.channels_last)


def test_cpu_graph_runs_fused_by_onednn_and_matches_eager(weights):
    """The CPU default: frozen TorchScript with oneDNN Graph fusion, the eager outputs within float rounding
    (1e-4, as the job against its torchvision reference: how close depends on the kernels oneDNN picks
    for the CPU's instructions, 1.4e-5 measured on an AVX2-only EPYC), also for a last batch smaller
    than the traced one."""
    cpu = torch.device("cpu")
    eager = load_model(SOURCE, weights, cpu, True)
    graph = optimize_graph(load_model(SOURCE, weights, cpu, True), "auto", cpu, 4, (224,), True)
    for batch in (4, 3):
        inputs = graph_inputs(batch)
        with torch.inference_mode():
            got, expected = graph(inputs).softmax(1), eager(inputs).softmax(1)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert "prim::oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())


def test_graph_that_fails_to_fuse_runs_unfused(weights, monkeypatch):
    import udfs.model

    real_script = udfs.model._script

    def no_fusion(model, example, device, dtype, fuse):
        if fuse:
            raise RuntimeError("oneDNN Graph cannot compile this partition")
        return real_script(model, example, device, dtype, fuse)

    monkeypatch.setattr(udfs.model, "_script", no_fusion)
    cpu = torch.device("cpu")
    graph = optimize_graph(load_model(SOURCE, weights, cpu, True), "auto", cpu, 4, (224,), True)
    inputs = graph_inputs(4)
    with torch.inference_mode():
        got, expected = graph(inputs).softmax(1), load_model(SOURCE, weights, cpu, True)(inputs).softmax(1)
    assert isinstance(graph, torch.jit.ScriptModule) and not torch.jit.onednn_fusion_enabled()
    assert "oneDNNFusionGroup" not in str(torch.jit.last_executed_optimized_graph())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)  # as the fused graph (above)


def test_bf16_counts_as_native_only_with_bf16_instructions(monkeypatch):
    """x86: AVX512-BF16 or AMX (an AVX2-only EPYC ran bf16 8.6x slower than fp32); elsewhere oneDNN's word."""
    import platform

    from udfs.model import cpu_runs_bf16_natively

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_runs_bf16_natively()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_runs_bf16_natively()
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_runs_bf16_natively() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_model_built_once_per_python_worker(spark, sample_images, tmp_path, caplog):
    """Many tasks and batches, worker reuse on: one build per worker process, not per task. Asked for
    bf16, the summary says what ran: bf16 where the CPU has it natively, else fp32.

    How many Python workers serve the tasks is the scheduler's choice (the shared session keeps
    idle workers from earlier tests), so the bounds come from what this run reports: every worker
    that scored built the model exactly once, and fewer workers than tasks means some worker ran
    several tasks on its one build."""
    from udfs.model import cpu_runs_bf16_natively

    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="infer_dogs"):
        summary = run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out),
                                         "--model", MODEL, "--random-weights", "90210",  # no earlier test cached it
                                         "--tasks-per-slot", "6", "--arrow-batch-size", "4", "--batch-size", "2",
                                         "--precision", "bf16"])
    workers = summary["workers"]
    tasks = sum(w["tasks"] for w in workers)
    assert tasks == 12  # local[2] x 6 tasks per slot: the job's partitioning, not the scheduler's
    assert all(w["model_builds"] == 1 for w in workers), workers
    assert summary["model_builds"] == len(workers) < tasks, workers  # so some worker reused its build
    assert sum(w["images"] for w in workers) == len(sample_images.files()) == len(read_predictions(out))
    assert summary["devices"] == ["cpu"]
    ran = ["bf16"] if cpu_runs_bf16_natively() else ["fp32"]
    assert summary["precisions"] == ran and all(w["precisions"] == ran for w in workers)
    assert summary["settings"]["precision"] == "bf16"
    assert ("--precision bf16 was asked for; the Python workers ran fp32" in caplog.text) == (ran == ["fp32"])


def test_fp32_on_cuda_turns_tf32_off():
    """cuDNN's default TF32 moved ResNet50 probabilities by 1e-2 on an H200: fp32 must be fp32."""
    from udfs.model import exact_fp32_on_cuda

    saved = torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        exact_fp32_on_cuda(torch.device("cuda", 0), torch.float16)  # reduced precision: left alone
        exact_fp32_on_cuda(torch.device("cpu"), None)
        assert torch.backends.cudnn.allow_tf32
        exact_fp32_on_cuda(torch.device("cuda", 0), None)
        assert not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def test_batch_size_defaults_per_device(weights):
    """No --batch-size: 8 on CPU, 256 on CUDA (the measured best); an explicit size wins."""
    from udfs.model import resolve_batch_size

    assert resolve_batch_size(None, torch.device("cpu")) == 8
    assert resolve_batch_size(None, torch.device("cuda", 0)) == 256
    assert resolve_batch_size(5, torch.device("cuda", 0)) == 5
    model = model_from_file(MODEL, weights)
    predictor = Predictor(scoring_settings(model=MODEL), torch.device("cpu"), model)
    assert predictor.batch_size == 8 and predictor.window == 2 * 8 + predictor.settings.decode_threads

