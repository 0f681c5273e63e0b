#!/usr/bin/env bash
# The README's demo command: set up (idempotent), then run the demo; extra arguments go to the demo
# (e.g. --images ~/StanfordDogs/Images, --weights resnet50.pth, --offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/infer-dogs-demo "$@"
