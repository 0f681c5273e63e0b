"""Listing: local folders and S3 prefixes -> one row per image with truth from the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.listing import (ListingError, build_listing, list_images, list_local, list_s3, output_inside_input,
                          read_label_map)
from tests.conftest import s3_client_for
from udfs.settings import S3Options


def test_build_listing_parses_truth_and_skips_non_images():
    listing = build_listing([
        ("s3://b/Images/n02085620-Chihuahua/n02085620_1.jpg", 10),
        ("s3://b/Images/n02085620-Chihuahua/n02085620_2.JPEG", 11),
        ("s3://b/Images/cats/tom.png", 12),
        ("s3://b/Images/README.txt", 13),
        ("s3://b/Annotation/n02085620_1", 14),
    ])
    rows = listing.images.to_dict("records")
    assert [r["image_id"] for r in rows] == ["tom", "n02085620_1", "n02085620_2"]
    assert rows[1] == {"path": "s3://b/Images/n02085620-Chihuahua/n02085620_1.jpg", "image_id": "n02085620_1",
                       "wnid": "n02085620", "label": "Chihuahua", "size_bytes": 10}
    assert rows[0]["wnid"] is None and rows[0]["label"] == "cats"
    assert listing.skipped_non_image == 2


def test_label_map_gives_truth_to_plain_folders():
    listing = build_listing([("/d/cats/a.jpg", 1), ("/d/dogs/b.jpg", 1)], label_map={"cats": "n02123045"})
    assert listing.images.set_index("label")["wnid"].to_dict() == {"cats": "n02123045", "dogs": None}


def test_label_map_values_must_be_wordnet_ids(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("label,wnid\ncats,n02123045\n")
    assert read_label_map(str(good)) == {"cats": "n02123045"}
    names = tmp_path / "names.csv"
    names.write_text("label,wnid\ncats,tabby cat\ndogs,n02085620\n")
    with pytest.raises(ListingError, match="'tabby cat' is not a WordNet id"):
        read_label_map(str(names))


def test_limit_keeps_the_first_paths_in_order():
    listing = build_listing([(f"/d/x/{i:03d}.jpg", 1) for i in range(20, 0, -1)], limit=5)
    assert listing.images["image_id"].tolist() == ["001", "002", "003", "004", "005"]
    assert listing.total_images == 20


def test_no_images_is_an_error():
    with pytest.raises(ListingError, match="no images found"):
        build_listing([("/d/notes.txt", 3)])


def test_local_listing_matches_the_files(sample_images):
    listed = dict(list_local(str(sample_images.images_dir)))
    assert sorted(listed) == [str(p) for p in sample_images.files()]
    assert all(size == (sample_images.images_dir / p).stat().st_size for p, size in listed.items())


def test_s3_listing_matches_the_uploaded_tree(s3_server, sample_images, s3_images):
    listed = dict(list_s3(s3_images, S3Options(endpoint_url=s3_server)))
    expected = {s3_images + p.relative_to(sample_images.images_dir).as_posix(): p.stat().st_size
                for p in sample_images.files()}
    assert listed == expected


def test_s3_listing_paginates_and_keeps_odd_keys(s3_server, tmp_path):
    client = s3_client_for(s3_server)
    client.create_bucket(Bucket="many-keys")
    keys = [f"p/n02085620-Chihuahua/img {i:04d} é#?.jpg" for i in range(1005)] + ["p/top.jpg"]
    for key in keys:
        client.put_object(Bucket="many-keys", Key=key, Body=b"x")
    listed = list_s3("s3://many-keys/p", S3Options(endpoint_url=s3_server))
    assert sorted(uri for uri, _ in listed) == sorted(f"s3://many-keys/{k}" for k in keys)


def test_missing_bucket_is_a_listing_error(s3_server):
    with pytest.raises(ListingError, match="NoSuchBucket"):
        list_s3("s3://no-such-bucket/x/", S3Options(endpoint_url=s3_server, max_attempts=1))


def test_listed_truths_the_model_cannot_predict():
    """Reported by the run (a warning, summary.json's accuracy.truth_not_in_model)."""
    from jobs.listing import truth_unknown_to_model
    from udfs.model_source import resolve_model_source

    images = build_listing([("/d/n02085620-Chihuahua/a.jpg", 1), ("/d/n99999999-Fake/b.jpg", 1),
                            ("/d/cats/c.jpg", 1), ("/d/goldfish/d.jpg", 1)]).images
    # a folder without a wnid is the class named exactly as it is (ImageNet's "goldfish"), or none
    assert truth_unknown_to_model(resolve_model_source("mobilenet_v3_small").classes, images) == ["cats", "n99999999"]


@pytest.mark.parametrize("input_uri, output_uri, inside", [
    ("s3://b/dogs/", "s3a://b/dogs/runs/1", "b/dogs/runs/1/"),
    ("s3://b/dogs", "s3://b/dogs-runs/1", None),  # a sibling prefix, not inside
    ("s3://b/dogs/", "s3://other/dogs/runs", None),
    ("s3://b/", "s3://b/runs/", "b/runs/"),
    ("s3://b/dogs/", "/local/runs", None),
    (".", "dbfs:/runs/1", None),  # another filesystem, whatever the local folder
    (".", "hdfs:///runs/1", None),
])
def test_output_inside_input_on_s3(input_uri, output_uri, inside):
    assert output_inside_input(input_uri, output_uri) == inside


def test_a_run_inside_its_input_folder_is_not_listed_as_input(tmp_path):
    """A second run into the same OUTPUT (inside INPUT) would list the first run's charts as images,
    and --mode overwrite would then delete them after the listing: not-found error rows."""
    from jobs.cli import parse_settings

    images = tmp_path / "in" / "n02085620-Chihuahua"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"x")
    charts = tmp_path / "in" / "run" / "charts"
    charts.mkdir(parents=True)
    (charts / "accuracy.png").write_bytes(b"x")
    (tmp_path / "in" / "runs-elsewhere.png").write_bytes(b"x")  # shares the prefix, not the folder
    settings = parse_settings(["--input", str(tmp_path / "in"), "--output", f"file://{tmp_path}/in/run/"])
    listing = list_images(settings)
    assert sorted(Path(p).name for p in listing.images["path"]) == ["a.jpg", "runs-elsewhere.png"]
    assert listing.skipped_in_output == 1
    elsewhere = parse_settings(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert list_images(elsewhere).skipped_in_output == 0


def test_local_listing_follows_folder_links_once_and_keeps_dangling_links(tmp_path):
    dataset = tmp_path / "elsewhere" / "chihuahuas"
    dataset.mkdir(parents=True)
    (dataset / "a.jpg").write_bytes(b"abc")
    root = tmp_path / "in"
    (root / "n02088364-beagle").mkdir(parents=True)
    (root / "n02088364-beagle" / "b.jpg").write_bytes(b"abcd")
    (root / "n02085620-Chihuahua").symlink_to(dataset)  # a class linked in from elsewhere
    (root / "n02085620-Chihuahua-again").symlink_to(dataset)  # the same folder under a second name
    (root / "n02088364-beagle" / "up").symlink_to(root)  # a loop
    (root / "n02088364-beagle" / "gone.jpg").symlink_to(tmp_path / "no-such-file.jpg")
    listed = dict(list_local(str(root)))
    assert listed == {f"{root}/n02085620-Chihuahua/a.jpg": 3, f"{root}/n02088364-beagle/b.jpg": 4,
                      f"{root}/n02088364-beagle/gone.jpg": None}
    images = build_listing(listed.items()).images.set_index("image_id")
    assert images.loc["a", "wnid"] == "n02085620"  # the class from the link's name
    assert images["size_bytes"].isna().tolist() == [False, False, True]


def test_names_that_are_not_utf8_are_left_out_and_counted(tmp_path):
    folder = tmp_path / "n02085620-Chihuahua"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(b"x")
    (folder / os.fsdecode(b"bad\xff\xfe.jpg")).write_bytes(b"x")
    listing = build_listing(list_local(str(tmp_path)))
    assert listing.images["image_id"].tolist() == ["good"] and listing.skipped_bad_name == 1


class StubS3:
    """A bucket of `folders` x `per_folder` keys below `prefix`, listed page by page as S3's
    ListObjectsV2 lists it; `fail_in` names a folder whose listing is refused."""

    def __init__(self, prefix: str, folders: int, per_folder: int, fail_in: str = ""):
        self.prefix, self.folders, self.per_folder, self.fail_in = prefix, folders, per_folder, fail_in

    def list_objects_v2(self, Bucket, Prefix, MaxKeys, Delimiter=None, ContinuationToken=None):
        from botocore.exceptions import ClientError

        if Delimiter:
            return {"CommonPrefixes": [{"Prefix": f"{Prefix}n{i:08d}-Breed_{i}/"} for i in range(self.folders)]}
        if self.fail_in and self.fail_in in Prefix:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "ListObjectsV2")
        start = int(ContinuationToken or 0)
        end = min(self.per_folder, start + MaxKeys)
        page = {"Contents": [{"Key": f"{Prefix}img_{j:06d}.jpg", "Size": 1000 + j} for j in range(start, end)],
                "IsTruncated": end < self.per_folder}
        return {**page, "NextContinuationToken": str(end)} if end < self.per_folder else page


def test_a_large_s3_listing_holds_one_copy_of_the_keys(monkeypatch):
    """Prefix by prefix into the images table, one (wnid, label) per folder: for 60,000 keys the
    driver's peak while listing stayed under 1.5x the finished table (1.57x when the keys were
    held as a list of keys, then of URIs, then of rows, each label a string of its own)."""
    import tracemalloc

    import jobs.listing

    monkeypatch.setattr(jobs.listing, "s3_client", lambda options: StubS3("dogs/", 60, 1000))
    tracemalloc.start()
    try:
        listing = build_listing(list_s3("s3://bucket/dogs/", S3Options()))
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    images = listing.images
    assert len(images) == 60_000 and images["path"].is_monotonic_increasing
    assert images["path"].iloc[0] == "s3://bucket/dogs/n00000000-Breed_0/img_000000.jpg"
    assert images["size_bytes"].iloc[1] == 1001
    first_folder = images[images["wnid"] == "n00000000"]
    assert len(first_folder) == 1000
    assert first_folder["label"].iloc[0] is first_folder["label"].iloc[-1]  # one string per folder
    assert peak < 1.5 * retained, (peak, retained)


def test_a_refused_sub_prefix_is_a_listing_error(monkeypatch):
    import jobs.listing

    monkeypatch.setattr(jobs.listing, "s3_client", lambda options: StubS3("dogs/", 5, 10, fail_in="Breed_3"))
    with pytest.raises(ListingError, match="cannot list s3://bucket/dogs/: AccessDenied"):
        build_listing(list_s3("s3://bucket/dogs/", S3Options()))
