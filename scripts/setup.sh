#!/usr/bin/env bash
# Sets up everything infer-dogs needs on a fresh Debian/Ubuntu machine with Python 3:
# Java 17 (apt, only when `java` is missing), a virtualenv in .venv with the pinned torch build,
# and the project itself (editable) with its test and demo extras. Safe to run again: it only fills gaps.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! command -v java >/dev/null 2>&1; then
  echo "setup: java not found, installing a JRE with apt" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null \
    || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch and torchvision are pinned together: other combinations are not available here.
$PIP install "torch==2.14.1" "torchvision==0.29.1"
$VENV/bin/python -c "import torch, torchvision" 
$PIP install -e ".[test,demo]"
$VENV/bin/python -c "import jobs, udfs, pyspark, moto"
echo "setup: ready ($VENV, $($VENV/bin/python -c 'import torch, pyspark; print("torch", torch.__version__, "pyspark", pyspark.__version__)'))" >&2
