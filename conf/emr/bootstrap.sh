#!/usr/bin/env bash
# EMR on EC2 bootstrap action: runs on every node before YARN and Spark start.
#   --bootstrap-actions Path=s3://my-bucket/infer-dogs/dist/bootstrap.sh,Args=[s3://my-bucket/infer-dogs/dist]
# The argument is where scripts/package.sh's output was uploaded. This script
#  - installs the Python the packed environment (infer-dogs-env.tar.gz, shipped by YARN through
#    spark.archives) was built with, so its bin/python link resolves on the node;
#  - installs the GPU discovery script where conf/emr/configurations.gpu.json points Spark;
#  - on GPU nodes of Amazon Linux 2023 releases (cgroup v2), mounts a cgroup v1 "devices"
#    hierarchy for YARN's GPU isolation (yarn-site / container-executor in configurations.gpu.json).
# Nothing here downloads from the internet: the OS packages come from the Amazon Linux repository
# and the rest from the S3 prefix.
set -euxo pipefail
ARTIFACTS=${1:?usage: bootstrap.sh s3://bucket/prefix-with-package.sh-output}
PYTHON_PACKAGE=${PYTHON_PACKAGE:-python3.11}  # the Python scripts/package.sh built the environment with

sudo dnf install -y -q "$PYTHON_PACKAGE"

sudo mkdir -p /opt/infer-dogs/conf
aws s3 cp "$ARTIFACTS/getGpusResources.sh" /tmp/getGpusResources.sh
sudo install -m 755 /tmp/getGpusResources.sh /opt/infer-dogs/conf/getGpusResources.sh

if command -v nvidia-smi >/dev/null 2>&1 && [ "$(stat -fc %T /sys/fs/cgroup)" = "cgroup2fs" ]; then
  sudo mkdir -p /spark-rapids-cgroup/devices
  sudo mount -t cgroup -o devices cgroupv1-devices /spark-rapids-cgroup/devices
  sudo chmod a+rwx -R /spark-rapids-cgroup
fi
