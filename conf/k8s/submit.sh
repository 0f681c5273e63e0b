#!/usr/bin/env bash
# infer-dogs on Kubernetes with GPU executors (one NVIDIA GPU per executor pod, shared by its 4 tasks).
#   K8S_API=https://my-cluster:6443 IMAGE=registry.example.com/infer-dogs:0.1.0 \
#     bash conf/k8s/submit.sh --input s3://my-bucket/dogs/Images/ --output s3a://my-bucket/infer-dogs/runs/run1 \
#       --weights s3://my-bucket/models/resnet50-11ad3fa6.pth
# Arguments go to the job, after the defaults below (a flag given twice: the last one wins).
# The image is conf/k8s/Dockerfile; docs/deploy.md has the whole procedure.
# PRINT_ONLY=1 prints the spark-submit command instead of running it (tests/test_conf.py uses it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S_API=${K8S_API:-https://kubernetes.default.svc:443}
IMAGE=${IMAGE:-registry.example.com/infer-dogs:0.1.0}
NAMESPACE=${NAMESPACE:-infer-dogs}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-spark}
EXECUTORS=${EXECUTORS:-2}

command=(
  spark-submit
  --master "k8s://$K8S_API"
  --deploy-mode cluster
  --name infer-dogs
  --conf "spark.kubernetes.namespace=$NAMESPACE"
  --conf "spark.kubernetes.container.image=$IMAGE"
  --conf "spark.kubernetes.authenticate.driver.serviceAccountName=$SERVICE_ACCOUNT"
  --conf "spark.kubernetes.executor.podTemplateFile=$here/gpu-executor-pod-template.yaml"
  --conf "spark.executor.instances=$EXECUTORS"
  --conf spark.driver.memory=4g
  --conf spark.executor.cores=4
  --conf spark.executor.memory=4g
  --conf spark.executor.memoryOverhead=12g
  --conf spark.executor.resource.gpu.amount=1
  --conf spark.executor.resource.gpu.vendor=nvidia.com
  --conf spark.executor.resource.gpu.discoveryScript=/opt/infer-dogs/conf/getGpusResources.sh
  --conf spark.task.resource.gpu.amount=0.25
  --conf spark.python.worker.reuse=true
  --conf spark.sql.execution.arrow.maxRecordsPerBatch=256
  --conf spark.locality.wait=0s
  --conf spark.hadoop.fs.s3a.aws.credentials.provider=software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider
  local:///opt/infer-dogs/infer_dogs.py
  --model resnet50
  --batch-size 256
  --decode-threads 4
  --tasks-per-slot 2
  "$@"
)
if [ -n "${PRINT_ONLY:-}" ]; then
  printf '%q ' "${command[@]}"
  echo
  exit 0
fi
exec "${command[@]}"
