#!/usr/bin/env bash
# A GPU discovery script for machines without GPUs (tests only): Spark runs it once per worker
# (spark.worker.resource.gpu.discoveryScript) and reads {"name": "gpu", "addresses": [...]}.
# Each call claims the next free fake address, so two workers on one machine (local-cluster)
# report different GPUs, as two GPU hosts would. FAKE_GPU_STATE is a folder that holds the
# claims (one run each); FAKE_GPUS_PER_WORKER (default 1) is how many addresses a worker gets.
set -euo pipefail
state=${FAKE_GPU_STATE:?set FAKE_GPU_STATE to an empty folder}
per_worker=${FAKE_GPUS_PER_WORKER:-1}
mkdir -p "$state"
worker=0
until mkdir "$state/worker-$worker" 2>/dev/null; do  # mkdir is atomic: one claim per call
  worker=$((worker + 1))
done
addresses=""
for ((i = 0; i < per_worker; i++)); do
  addresses+="${addresses:+, }\"$((worker * per_worker + i))\""
done
echo "{\"name\": \"gpu\", \"addresses\": [$addresses]}"
