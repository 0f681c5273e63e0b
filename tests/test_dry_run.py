"""`--dry-run` (jobs/dry_run.py): the plan without scoring, and its task count matching a run's."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from jobs.dry_run import Slots, format_plan, planned_tasks, slots_for
from jobs.infer_dogs import main
from jobs.listing import build_listing
from jobs.spark_session import scoring_partitions
from udfs.settings import Settings


def conf(**values):
    return lambda key: values.get(key)


@pytest.mark.parametrize("master, values, expected", [
    ("local", {}, 1),
    ("local[3]", {}, 3),
    ("local[4, 2]", {}, 4),
    ("local[*]", {}, os.cpu_count()),
    ("local-cluster[2,1,1024]", {}, 2),
    ("local-cluster[1,1,1024]", {}, 2),  # Spark's default parallelism is at least 2 on a cluster
    ("yarn", {"spark.executor.instances": "4", "spark.executor.cores": "8"}, 32),
    ("yarn", {"spark.default.parallelism": "12", "spark.executor.instances": "4"}, 12),
    ("yarn", {"spark.executor.instances": "4", "spark.executor.cores": "8",
              "spark.dynamicAllocation.enabled": "true"}, None),
    ("k8s://https://api:6443", {}, None),
])
def test_slots_follow_sparks_default_parallelism(master, values, expected):
    assert slots_for(master, values.get).count == expected


def test_planned_tasks_equal_what_a_run_uses(spark):
    """The test session is local[2]: the dry run's rule gives the partitions score_images makes."""
    slots = slots_for("local[2]", conf())
    for n_images in (1, 4, 120, 5000):
        assert planned_tasks(slots.count, n_images, 3) == scoring_partitions(spark, n_images, 3)


def test_plan_lists_classes_and_tasks_and_unknown_slots():
    listing = build_listing([("/d/n02085620-Chihuahua/a.jpg", 2**20), ("/d/n02085620-Chihuahua/b.jpg", 2**20),
                             ("/d/n02088364-beagle/c.jpg", 10), ("/d/cats/d.jpg", 10), ("/d/notes.txt", 5)])
    settings = Settings(input="/d", output="/out")
    text = format_plan(settings, listing, "local[2]", Slots(2, "master local[2]: 2 threads"))
    assert "images 4 in 3 classes (4 listed; 1 non-image objects skipped)" in text
    assert "scoring tasks: 4 = min(4 images, 2 slots x 3 per slot)" in text
    assert "without a known truth" in text and ": 1 images" in text
    table = text.split("\n\n", 1)[1].splitlines()
    assert [line.split()[-2] for line in table[1:]] == ["1", "1", "2"]  # beagle, cats, Chihuahua: by label
    assert "S3 listing" not in text
    unknown = format_plan(settings, listing, "yarn", slots_for("yarn", conf()))
    assert "scoring tasks: min(4 images, slots x 3 per slot); master yarn: slots depend" in unknown
    retried = replace(listing, s3_retries={"requests_retried": 5, "throttled": 2, "retried": 4, "gave_up": 0})
    assert "S3 listing: 5 requests retried for 4 pages (2 throttling answers)" in format_plan(
        settings, retried, "local[2]", Slots(2, "local"))


def test_plan_counts_the_truths_that_are_none_of_the_model_classes():
    """With the model resolved (a run's dry run), truth is what a run would find: the class with the
    folder's wnid, else the class named exactly as the folder (`--classes`: its list)."""
    from udfs.labels import parse_class_list
    from udfs.model_source import resolve_model_source

    listing = build_listing([("/d/n02085620-Chihuahua/a.jpg", 1), ("/d/n02088364-beagle/b.jpg", 1),
                             ("/d/cats/c.jpg", 1), ("/d/cats/d.jpg", 1)])
    source = resolve_model_source("mobilenet_v3_small")
    settings = Settings(input="/d", output="/out").with_model_source(source)
    text = format_plan(settings, listing, "local[2]", Slots(2, "local"))
    assert "without a known truth (none of the model's 1000 classes): 2 images" in text
    two = source.with_classes(parse_class_list("n02085620-Chihuahua\ncats\n", "two.txt"))
    text = format_plan(settings.with_model_source(two), listing, "local[2]", Slots(2, "local"))
    assert "without a known truth (none of the model's 2 classes): 1 images" in text


def test_dry_run_scores_nothing_and_writes_nothing(sample_images, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--input", str(sample_images.images_dir), "--output", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    n = len(sample_images.files())
    assert printed.startswith("DRY RUN: nothing is scored and nothing is written.")
    assert f"images {n} in " in printed and "scoring tasks: " in printed
    for breed in {f.parent.name.split("-", 1)[1].replace("_", " ") for f in sample_images.files()}:
        assert breed in printed
    assert not out.exists()
