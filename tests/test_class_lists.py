"""--classes: a class list read from a file (udfs.labels), the truth matched to it by identity, the
head size read from the weights (udfs.model_source) and every bad input as one line and exit code 2,
before Spark starts."""

from __future__ import annotations

import re

import pytest
import torch

import jobs.infer_dogs
from tests.conftest import upload_tree
from jobs.infer_dogs import main
from udfs.errors import ClassListError, WeightsError
from udfs.labels import IMAGENET, ClassNames, imagenet_wnids, parse_class_list, read_class_list
from udfs.model import random_state_dict, resolve_weights
from udfs.model_source import resolve_model_source
from udfs.settings import S3Options

IMAGE_FOLDER_CLASSES = "n02085620-Chihuahua\nn02085782-Japanese_spaniel\nn02106166-Border_collie\n"


def test_image_folder_classes_carry_wnids_and_labels():
    names = parse_class_list(IMAGE_FOLDER_CLASSES + "\n\n", "classes.txt")  # empty lines at the end are no class
    assert names.wnids == ("n02085620", "n02085782", "n02106166")
    assert names.labels == ("Chihuahua", "Japanese spaniel", "Border collie")  # as folder names are read
    assert len(names) == 3 and names.origin == "classes.txt"


def test_plain_lines_are_labels_without_wnids():
    names = parse_class_list("cats\r\ndogs\r\nhot dog\r\n", "c.txt")
    assert names.labels == ("cats", "dogs", "hot dog") and names.wnids == (None, None, None)


def test_csv_rows_in_index_order_whatever_their_order_in_the_file():
    names = parse_class_list("\ufeffindex,label,wnid\n2,Border collie,n02106166\n0,Chihuahua,n02085620\n"
                             "1,\"a \"\"quoted\"\", name\",\n", "c.csv")
    assert names.labels == ("Chihuahua", 'a "quoted", name', "Border collie")
    assert names.wnids == ("n02085620", None, "n02106166")
    assert parse_class_list("index,label\n0,cats\n1,dogs\n", "c.csv").labels == ("cats", "dogs")


@pytest.mark.parametrize("text, message", [
    ("", "classes file f lists no classes"),
    ("\n\n", "classes file f lists no classes"),
    ("cats\n\ndogs\n", "classes file f: line 2 is empty (empty lines only at the end)"),
    ("\ncats\n", "classes file f: line 1 is empty"),
    ("cats\ndogs\ncats\n", "classes file f lists 'cats' twice (lines 1 and 3): each class once"),
    ("n02085620-Chihuahua\nn02085620-Chihuahua_dog\n", "lists 'n02085620' twice (lines 1 and 2)"),
    ("index,label\n0,a\n2,b\n", "the indices must be 0..1 for 2 classes (found 2)"),
    ("index,label\n1,a\n2,b\n", "the indices must be 0..1 for 2 classes (found 2)"),
    ("index,label\n0,a\n0,b\n", "index 0 on lines 2 and 3: the indices must be 0..N-1, each once"),
    ("index,label\n0,a\n-1,b\n", "the indices must be 0..1 for 2 classes (found -1)"),
    ("index,label\nzero,a\n", "line 2: index 'zero' is not a whole number"),
    ("index,label\n0,a\n\n1,b\n", "line 3 is empty"),
    ("index,label\n0,a,b\n", "line 2 has 3 values, the header 2"),
    ("index,label\n0,\n", "line 2 has no label"),
    ("index,name\n0,a\n", "a CSV needs the header index,label or index,label,wnid (found index,name)"),
    ("index,label,wnid\n0,a,dog\n", "line 2: 'dog' is not a WordNet id"),
])
def test_bad_class_lists_say_what_is_wrong_in_one_line(text, message):
    with pytest.raises(ClassListError) as refused:
        parse_class_list(text, "f")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_unreadable_class_lists(tmp_path, s3_server):
    s3 = S3Options(endpoint_url=s3_server, max_attempts=1)
    with pytest.raises(ClassListError, match=f"cannot read classes file {tmp_path}: "):
        read_class_list(str(tmp_path), s3)  # a folder
    binary = tmp_path / "classes.bin"
    binary.write_bytes(b"\xff\xfe\x00cats")
    with pytest.raises(ClassListError, match=f"classes file {binary} is not UTF-8 text"):
        read_class_list(str(binary), s3)
    text = tmp_path / "tree" / "classes.txt"
    text.parent.mkdir()
    text.write_text(IMAGE_FOLDER_CLASSES)
    uri = upload_tree(s3_server, text.parent, "classes-test", "lists/")
    assert read_class_list(uri + "classes.txt", s3).labels[2] == "Border collie"
    with pytest.raises(ClassListError, match=f"cannot read classes file {uri}missing.txt: .*NoSuchKey"):
        read_class_list(uri + "missing.txt", s3)


def test_truth_is_the_class_with_the_same_wnid_else_the_same_name():
    names = parse_class_list("index,label,wnid\n0,Chihuahua,n02085620\n1,collie,n02106030\n2,cats,\n", "c.csv")
    assert names.truth_index("n02085620", "anything") == 0  # both carry a wnid: the wnid decides
    assert names.truth_index("n02106166", "collie") is None  # a Border collie is not a collie, same name or not
    assert names.truth_index(None, "collie") == 1  # a folder without a wnid: the exact name
    assert names.truth_index(None, "Collie") is None and names.truth_index(None, "Border collie") is None
    assert names.truth_index("n02123045", "cats") == 2  # a class without a wnid: its exact name
    assert names.truth_index(None, None) is None


def test_imagenet_classes_match_wnids_and_exact_names():
    names = resolve_model_source("resnet50").classes
    assert names.origin == IMAGENET and len(names) == 1000
    assert names.truth_index("n02085620", "Chihuahua") == imagenet_wnids().index("n02085620")
    assert names.truth_index(None, "goldfish") == 1 and names.truth_index(None, "Goldfish") is None


@pytest.mark.parametrize("model, head", [
    ("resnet50", "fc.weight"),
    ("efficientnet_b0", "classifier.1.weight"),
    ("squeezenet1_0", "classifier.1.weight"),  # a 1x1 convolution
    ("inception_v3", "fc.weight"),  # and its auxiliary head
    ("timm/tf_efficientnet_lite0", "classifier.weight"),
    ("timm/vit_tiny_patch16_224.augreg_in21k", "head.weight"),  # a 21843-class pretrained head
])
@pytest.mark.filterwarnings("ignore:The default weight initialization of inception_v3")
def test_head_size_is_read_from_the_weights(model, head):
    source = resolve_model_source(model).with_classes(ClassNames(labels=tuple("abcdefghijkl"), wnids=(None,) * 12))
    assert source.num_classes == 12
    torch.manual_seed(0)
    state = source.build().state_dict()
    assert source.head_size(state) == 12 and state[head].shape[0] == 12
    assert resolve_model_source(model).head_size({}) is None


@pytest.fixture(scope="module")
def twelve_class_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twelve")
    source = resolve_model_source("mobilenet_v3_small").with_classes(
        ClassNames(labels=tuple(f"c{i}" for i in range(12)), wnids=(None,) * 12))
    torch.save(random_state_dict(source, 0), folder / "head12.pt")
    return folder / "head12.pt"


def test_a_head_that_is_not_imagenet_needs_its_classes(twelve_class_weights, tmp_path):
    source = resolve_model_source("mobilenet_v3_small")
    with pytest.raises(WeightsError, match=f"the weights in {twelve_class_weights} have a 12-class head: give its "
                                           "classes in index order with --classes FILE"):
        resolve_weights(source, str(twelve_class_weights), None, tmp_path, S3Options())
    ten = source.with_classes(parse_class_list("\n".join(f"c{i}" for i in range(10)), "ten.txt"))
    with pytest.raises(WeightsError, match="have a 12-class head, but ten.txt lists 10 classes"):
        resolve_weights(ten, str(twelve_class_weights), None, tmp_path, S3Options())
    twelve = source.with_classes(parse_class_list("\n".join(f"c{i}" for i in range(12)), "twelve.txt"))
    weights = resolve_weights(twelve, str(twelve_class_weights), None, tmp_path, S3Options())
    assert weights.kind == "file"
    random_weights = resolve_weights(ten, None, 3, tmp_path, S3Options())  # built for the list's size
    assert ten.head_size(torch.load(random_weights.driver_path, weights_only=True)) == 10 and random_weights.is_random


def classes_file(tmp_path, text: str, name: str = "classes.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case, weights, text, message", [
    ("head without classes", "twelve", None, "have a 12-class head: give its classes in index order"),
    ("head and classes differ", "twelve", "\n".join(f"c{i}" for i in range(10)),
     "have a 12-class head, but .*classes.txt lists 10 classes"),
    ("imagenet head with classes", "random", "\n".join(f"c{i}" for i in range(10)), None),
    ("duplicate classes", "random", "cats\ndogs\ncats\n", "lists 'cats' twice"),
    ("empty line", "random", "cats\n\ndogs\n", "line 2 is empty"),
    ("csv indices", "random", "index,label\n0,cats\n5,dogs\n", "the indices must be 0..1"),
    ("missing file", "random", "missing", "classes file not found: "),
    ("unreadable file", "random", "folder", "cannot read classes file "),
])
def test_bad_classes_exit_2_with_one_line_before_spark(case, weights, text, message, sample_images, tmp_path,
                                                       twelve_class_weights, monkeypatch, capsys):
    monkeypatch.setattr(jobs.infer_dogs, "start_spark", lambda settings: pytest.fail("Spark was started"))
    argv = ["--input", str(sample_images.images_dir), "--output", str(tmp_path / "run"),
            "--model", "mobilenet_v3_small"]
    argv += ["--weights", str(twelve_class_weights)] if weights == "twelve" else ["--random-weights", "0"]
    if text == "missing":
        argv += ["--classes", str(tmp_path / "no-such.txt")]
    elif text == "folder":
        argv += ["--classes", str(tmp_path)]
    elif text is not None:
        argv += ["--classes", classes_file(tmp_path, text)]
    if message is None:  # a 10-class list and random weights: the head is built for 10 classes, Spark is next
        with pytest.raises(pytest.fail.Exception, match="Spark was started"):
            main(argv)
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("infer-dogs: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()
