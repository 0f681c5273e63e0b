#!/usr/bin/env bash
# GPU discovery for Spark (as in Spark's examples/src/main/scripts/getGpusResources.sh and the
# RAPIDS Accelerator deployment guides): prints {"name": "gpu", "addresses": ["0", "1", ...]},
# the indices nvidia-smi sees. Spark runs it where the GPUs are:
#   spark.executor.resource.gpu.discoveryScript  (YARN, Kubernetes: each executor container sees
#                                                 only the GPUs it was given, so indices start at 0)
#   spark.worker.resource.gpu.discoveryScript    (standalone: each worker reports its host's GPUs)
# Copy it to the same path on every node (EMR bootstrap, Databricks init script, image layer)
# and make it executable.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "getGpusResources.sh: nvidia-smi not found: no NVIDIA driver on $(hostname)" >&2
  exit 1
fi
indices=$(nvidia-smi --query-gpu=index --format=csv,noheader)
if [ -z "$indices" ]; then
  echo "getGpusResources.sh: nvidia-smi lists no GPUs on $(hostname)" >&2
  exit 1
fi
addresses=$(printf '%s\n' "$indices" | sed -e 's/^ *//' -e 's/ *$//' -e 's/.*/"&"/' | paste -sd, - | sed 's/,/, /g')
echo "{\"name\": \"gpu\", \"addresses\": [$addresses]}"
