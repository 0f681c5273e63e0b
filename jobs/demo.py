"""The demo: a Stanford-Dogs-shaped tree in an embedded S3 endpoint, scored by the real job.

No cloud account needed: it starts moto's S3 server on 127.0.0.1 (a real HTTP endpoint),
uploads images to `s3://infer-dogs-demo/dogs/Images/`, and runs `spark-submit
jobs/infer_dogs.py` in local mode against that prefix, so the same code path as on a cluster
(boto3 listing on the driver, byte reads on executors) is exercised.

Images: `--images DIR` (a local copy of Stanford Dogs or any part of it), else the official
archive when it can be downloaded, else generated images in the same layout (said loudly).
Weights: `--weights PATH`, else torchvision's ResNet50 weights when they can be downloaded,
else `--random-weights 0` (said loudly: the accuracy then means nothing).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from jobs.sample_images import download_stanford_dogs, make_synthetic_tree, sample_stanford_dogs

log = logging.getLogger("infer_dogs.demo")
BUCKET = "infer-dogs-demo"
PREFIX = "dogs/Images/"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_ENV = {  # fake credentials for the embedded endpoint only
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_images(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """A local Images/ tree to upload, and a sentence saying where it came from."""
    if args.images:
        return sample_stanford_dogs(Path(args.images), workdir, args.breeds, args.per_breed), \
            f"a sample of your images in {args.images}"
    if not args.offline:
        try:
            source = download_stanford_dogs(Path(args.cache_dir))
            return sample_stanford_dogs(source, workdir, args.breeds, args.per_breed), \
                "a sample of the official Stanford Dogs archive"
        except OSError as exc:
            log.warning("cannot download Stanford Dogs (%s): generating images instead", exc)
    images = make_synthetic_tree(workdir, breeds=min(args.breeds, 8), per_breed=args.per_breed)
    return images, "GENERATED images (no photos available offline): the predictions mean nothing"


def weights_arguments(args: argparse.Namespace) -> tuple[list[str], str]:
    if args.weights:
        return ["--weights", args.weights], f"weights from {args.weights}"
    if not args.offline:
        from udfs.model import default_weights

        entry = default_weights(args.model)
        try:
            entry.get_state_dict(progress=False, check_hash=True)
            return [], f"torchvision's {entry}"
        except Exception as exc:  # no network: URLError, socket timeouts
            log.warning("cannot download %s (%s): using random weights", entry, exc)
    return ["--random-weights", "0"], "RANDOM weights (no real weights available offline): accuracy means nothing"


def upload(endpoint: str, images_dir: Path) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    files = sorted(p for p in images_dir.rglob("*") if p.is_file())
    for file in files:
        client.upload_file(str(file), BUCKET, PREFIX + file.relative_to(images_dir).as_posix())
    log.info("uploaded %d images to s3://%s/%s", len(files), BUCKET, PREFIX)
    return f"s3://{BUCKET}/{PREFIX}"


def spark_submit_command(input_uri: str, endpoint: str, output: Path, args: argparse.Namespace,
                         weights: list[str]) -> list[str]:
    import pyspark

    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    return [
        str(spark_submit),
        "--master", "local[2]",
        "--properties-file", str(PROJECT_ROOT / "conf" / "spark-defaults.local.conf"),
        str(PROJECT_ROOT / "jobs" / "infer_dogs.py"),
        "--input", input_uri,
        "--s3-endpoint-url", endpoint,
        "--output", str(output),
        "--model", args.model,
        "--mode", "overwrite",
        *weights,
    ]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="infer-dogs-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="local Stanford Dogs copy (or any <wnid>-<Breed>/ tree) to sample from")
    parser.add_argument("--weights", help="a ResNet50 state dict file")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--breeds", type=int, default=6)
    parser.add_argument("--per-breed", type=int, default=8)
    parser.add_argument("--output", default="demo-output/run", help="run directory (replaced if present)")
    parser.add_argument("--offline", action="store_true", help="do not try to download images or weights")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "infer-dogs"))
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    args = parse_args(argv)
    from moto.server import ThreadedMotoServer

    os.environ.update(DEMO_ENV)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="infer-dogs-demo-"))
    try:
        images_dir, images_note = prepare_images(args, workdir)
        weights, weights_note = weights_arguments(args)
        input_uri = upload(endpoint, images_dir)
        print(f"demo: images: {images_note}\ndemo: model {args.model}, {weights_note}\n"
              f"demo: input {input_uri} on the embedded S3 endpoint {endpoint}", flush=True)
        output = Path(args.output).resolve()
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
        command = spark_submit_command(input_uri, endpoint, output, args, weights)
        log.info("running: %s", " ".join(command))
        return subprocess.run(command, env=env, check=False).returncode
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
