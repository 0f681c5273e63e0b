"""Fine-tuned heads with their own classes, end to end (--weights with --classes).

Two heads, each against a plain reference written here (the library's model built with that head
size, the weights loaded with load_state_dict, the library's own eval transform on Pillow images,
torch.softmax):
- the real EfficientNet-Lite0 weights cut to the 120 Stanford Dogs breeds: their classifier rows in
  sorted folder-name order and an ImageFolder-style classes file. Its top-1 cannot be below the
  1000-class model's on the same photos (the arg-max over a subset holding the true class).
- a torchvision resnet50 with a seeded 12-class head and a 12-line classes file read from S3.
And scripts/fine_tune_head.py, the README's worked example, writes what the job accepts.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import timm.data
import torch
import torchvision

from jobs.sample_images import dog_breeds
from scripts.efficientnet_lite0_weights import ARCHITECTURE, MODEL, convert
from scripts.fine_tune_head import fine_tune
from tests.conftest import upload_tree
from tests.helpers import read_per_class, read_predictions, read_summary, run_in_process, softmax_rows
from tests.test_infer_dogs import assert_per_class_consistent
from udfs.labels import imagenet_wnids, parse_class_list, truth_from_folder
from udfs.model import resolve_weights
from udfs.model_source import resolve_model_source
from udfs.settings import S3Options

TIE = 1e-5  # two classes this close in the reference may swap places in the fused graph
DOG_FOLDERS = sorted(f"{wnid}-{breed}" for wnid, breed in dog_breeds(120))  # ImageFolder's class order


def assert_rows_equal_reference(predictions, reference: dict[str, torch.Tensor], classes: list[str]) -> None:
    """Same top-k and probabilities; the truth, the predicted class and correctness by the class list."""
    names = parse_class_list("\n".join(classes), "classes")
    assert predictions["error"].isna().all(), predictions["error"].dropna().tolist()
    for row in predictions.itertuples():
        folder = row.path.split("/")[-2]
        probs = reference[f"{folder}/{row.path.split('/')[-1]}"].numpy()
        assert len(probs) == len(classes)
        ref_top = np.argsort(-probs, kind="stable")
        indices = list(row.top_k_indices)
        np.testing.assert_allclose(row.top_k_probs, probs[indices], atol=1e-4)
        for position, (ours, theirs) in enumerate(zip(indices, ref_top[:5])):
            assert ours == theirs or abs(probs[ours] - probs[theirs]) < TIE, (row.path, position, ours, theirs)
        truth = names.truth_index(*truth_from_folder(folder))
        assert truth is not None
        assert (row.wnid, row.label) == (names.wnid(truth), names.label(truth))  # the class list's names
        assert row.pred_index == indices[0]
        assert (row.pred_wnid, row.pred_label) == (names.wnid(row.pred_index), names.label(row.pred_index))
        assert row.correct == (row.pred_index == truth)
        assert row.top5_correct == (truth in indices[:5])


def assert_per_class_names_the_classes(out, classes: list[str], sample_images) -> None:
    predictions, per_class = read_predictions(out), read_per_class(out)
    assert_per_class_consistent(predictions, per_class)
    names = parse_class_list("\n".join(classes), "classes")
    present = {names.truth_index(*truth_from_folder(f.parent.name)) for f in sample_images.files()}
    assert len(per_class) == len(present)  # one row per breed present
    assert sorted(zip(per_class["wnid"], per_class["label"])) == sorted((names.wnid(i), names.label(i)) for i in present)
    assert per_class["n_scored"].sum() == len(sample_images.files())


@pytest.fixture(scope="module")
def dog_head(tmp_path_factory):
    """(weights, classes file, the full 1000-class weights) for EfficientNet-Lite0 cut to 120 breeds."""
    folder = tmp_path_factory.mktemp("lite0-dogs")
    full = convert(folder / f"{ARCHITECTURE}.pt")
    state = torch.load(full, weights_only=True)
    rows = [imagenet_wnids().index(name.split("-", 1)[0]) for name in DOG_FOLDERS]
    state["classifier.weight"] = state["classifier.weight"][rows].clone()
    state["classifier.bias"] = state["classifier.bias"][rows].clone()
    torch.save(state, folder / "dogs120.pt")
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in DOG_FOLDERS))
    return folder / "dogs120.pt", folder / "classes.txt", full


def test_a_120_breed_head_from_real_weights(spark, sample_images, dog_head, tmp_path, one_torch_thread):
    weights, classes, full = dog_head
    out = tmp_path / "run"
    run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out), "--model", MODEL,
                           "--weights", str(weights), "--classes", str(classes)])
    files = sample_images.files()
    head = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=120)
    head.load_state_dict(torch.load(weights, weights_only=True))
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(head))
    predictions = read_predictions(out)
    assert len(predictions) == len(files)
    assert_rows_equal_reference(predictions, softmax_rows(head, transform, files), DOG_FOLDERS)
    assert_per_class_names_the_classes(out, DOG_FOLDERS, sample_images)

    summary = read_summary(out)
    assert summary["model_source"]["num_classes"] == 120 and summary["model_source"]["classes"] == str(classes)
    assert summary["counts"]["with_truth"] == len(files) and summary["accuracy"]["truth_not_in_model"] == []
    imagenet = timm.create_model(ARCHITECTURE, pretrained=False)
    imagenet.load_state_dict(torch.load(full, weights_only=True))
    wnids = imagenet_wnids()
    imagenet_top1 = np.mean([wnids[int(probs.argmax())] == path.split("-", 1)[0]
                             for path, probs in softmax_rows(imagenet, transform, files).items()])
    assert summary["accuracy"]["top1"] == pytest.approx(predictions["correct"].astype(float).mean())
    assert summary["accuracy"]["top1"] >= imagenet_top1, (summary["accuracy"], imagenet_top1)


def twelve_classes(sample_images) -> list[str]:
    """The breeds present, then other Stanford Dogs breeds, to 12, in sorted folder-name order."""
    present = sorted({f.parent.name for f in sample_images.files()})
    taken = {name.split("-", 1)[0] for name in present}
    others = [f"{w}-{b}" for w, b in dog_breeds(120) if w not in taken]
    return sorted(present + others[:12 - len(present)])


def test_a_seeded_12_class_resnet50_head_with_classes_from_s3(spark, sample_images, s3_server, tmp_path,
                                                             one_torch_thread):
    torch.manual_seed(12)
    model = torchvision.models.resnet50(num_classes=12)
    torch.save(model.state_dict(), tmp_path / "resnet50-12.pt")
    classes = twelve_classes(sample_images)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "classes.txt").write_text("\n".join(classes) + "\n")
    classes_uri = upload_tree(s3_server, tmp_path / "lists", "heads", "resnet50/") + "classes.txt"
    out = tmp_path / "run"
    run_in_process(spark, ["--input", str(sample_images.images_dir), "--output", str(out), "--model", "resnet50",
                           "--weights", str(tmp_path / "resnet50-12.pt"), "--classes", classes_uri,
                           "--s3-endpoint-url", s3_server])
    transform = torchvision.models.ResNet50_Weights.DEFAULT.transforms()  # torchvision's own eval transform
    predictions = read_predictions(out)
    assert len(predictions) == len(sample_images.files())
    assert_rows_equal_reference(predictions, softmax_rows(model, transform, sample_images.files()), classes)
    assert_per_class_names_the_classes(out, classes, sample_images)
    summary = read_summary(out)
    assert (summary["model_source"]["num_classes"], summary["model_source"]["classes"]) == (12, classes_uri)


def test_the_fine_tuning_script_writes_what_the_job_scores(sample_images, tmp_path, one_torch_thread):
    """The README's worked example: ImageFolder's classes, the head trained, the backbone untouched."""
    model_file, classes_file = fine_tune(sample_images.images_dir, tmp_path / "head", "mobilenet_v3_small",
                                         random_init=0, epochs=1)
    folders = sorted({f.parent.name for f in sample_images.files()})
    assert classes_file.read_text().splitlines() == folders
    source = resolve_model_source("mobilenet_v3_small")
    trained = torch.load(model_file, weights_only=True)
    assert source.head_size(trained) == len(folders)
    start = torch.load(resolve_weights(source, None, 0, tmp_path / "w", S3Options()).driver_path, weights_only=True)
    head = set(source.head_keys())
    assert all(torch.equal(trained[k], start[k]) for k in start if k not in head)  # the backbone frozen
    fitted = source.with_classes(parse_class_list(classes_file.read_text(), str(classes_file)))
    weights = resolve_weights(fitted, str(model_file), None, tmp_path / "work", S3Options())  # the job's check
    assert weights.kind == "file"
