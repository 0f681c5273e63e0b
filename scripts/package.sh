#!/usr/bin/env bash
# Builds what a cluster needs to run infer-dogs, in dist/ (docs/deploy.md says where each goes):
#   infer_dogs-<version>-py3-none-any.whl  the project (jobs/, udfs/)
#   requirements-cluster.txt               its dependencies less pyspark (the cluster's Spark provides
#                                          PySpark), torch and torchvision pinned
#   infer_dogs.py                          the spark-submit entry point (jobs/infer_dogs.py)
#   getGpusResources.sh, bootstrap.sh      GPU discovery script and EMR bootstrap action
#   infer-dogs-env.tar.gz                  a packed virtualenv (venv-pack) holding all of the above,
#                                          for spark.archives=...#environment with
#                                          spark.pyspark.python=./environment/bin/python
# Usage: bash scripts/package.sh [--wheel-only] [--dist DIR]
#   --wheel-only  everything but the packed environment (offline, seconds): Databricks, Kubernetes
# Environment:
#   ENV_PYTHON   the interpreter the packed environment is built on (default python3). venv-pack does
#                not copy it: every cluster node needs the same Python version at the same path, so
#                build on the cluster's OS image (e.g. amazonlinux:2023 with python3.11 for EMR).
#   TORCH_VERSION, TORCHVISION_VERSION  pins for the environment (default: the versions tested here)
#   PIP_EXTRA_INDEX_URL  e.g. https://download.pytorch.org/whl/cu126 for a given CUDA build
set -euo pipefail
cd "$(dirname "$0")/.."

WHEEL_ONLY=""
DIST=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel-only) WHEEL_ONLY=1 ;;
    --dist) DIST=$2; shift ;;
    *) echo "package.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BUILD_PYTHON=${BUILD_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
ENV_PYTHON=${ENV_PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.29.1}
ENV_DIR=${ENV_DIR:-build/cluster-env}

mkdir -p "$DIST"
rm -f "$DIST"/infer_dogs-*.whl
# Built from a clean copy of the sources: setuptools leaves build/ and *.egg-info in the tree it
# builds (and reuses a stale build/lib). No build isolation: setuptools is all the build needs, and
# the project venv has it (works offline).
source_copy=$(mktemp -d)
trap 'rm -rf "$source_copy"' EXIT
cp -r pyproject.toml README.md jobs udfs "$source_copy/"
find "$source_copy" -name __pycache__ -prune -exec rm -rf {} +
"$BUILD_PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DIST" "$source_copy"
"$BUILD_PYTHON" - "$TORCH_VERSION" "$TORCHVISION_VERSION" > "$DIST/requirements-cluster.txt" <<'PY'
import re
import sys

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, as the tomli package (a dependency there)
    import tomli as tomllib

pins = {"torch": f"torch=={sys.argv[1]}", "torchvision": f"torchvision=={sys.argv[2]}"}
print("# infer-dogs dependencies for cluster nodes, from pyproject.toml; pyspark comes from the cluster")
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
    if name != "pyspark":
        print(pins.get(name, requirement))
PY
cp jobs/infer_dogs.py "$DIST/infer_dogs.py"
install -m 755 conf/getGpusResources.sh conf/emr/bootstrap.sh "$DIST/"
echo "package.sh: $(ls "$DIST"/infer_dogs-*.whl), requirements-cluster.txt, infer_dogs.py, scripts in $DIST/" >&2
[ -n "$WHEEL_ONLY" ] && exit 0

rm -rf "$ENV_DIR"
"$ENV_PYTHON" -m venv "$ENV_DIR"
PIP="$ENV_DIR/bin/python -m pip --disable-pip-version-check --quiet"
$PIP install -r "$DIST/requirements-cluster.txt" venv-pack
$PIP install --no-deps "$DIST"/infer_dogs-*.whl
# A smoke test; the project's own modules import pyspark, which only the cluster has.
"$ENV_DIR/bin/python" -c "import importlib.util as u, torch, torchvision, PIL, boto3, pandas, pyarrow
assert u.find_spec('jobs') and u.find_spec('udfs')"
"$ENV_DIR/bin/venv-pack" --prefix "$ENV_DIR" --output "$DIST/infer-dogs-env.tar.gz" --force --quiet
echo "package.sh: $DIST/infer-dogs-env.tar.gz ($(du -h "$DIST/infer-dogs-env.tar.gz" | cut -f1)), Python $("$ENV_DIR/bin/python" -c 'import sys; print(sys.version.split()[0])')" >&2
