#!/usr/bin/env bash
# N training processes on this machine, each with D CPU devices: multi-host code, tested without a cluster.
#   launch/local.sh 2 4 --config=configs/tiny.py:runlocal --workdir=/tmp/run --config.mesh.fsdp=4
#   MODULE=dit_jax.prepare launch/local.sh 2 1 --config=configs/tiny.py --data_dir=/tmp/data   # each its share
# Process 0's output is shown; the others' go to WORKDIR/process_<i>.log (DATA_DIR's, for prepare).
# PYTHON picks the interpreter, MODULE the program (default dit_jax.train).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: [MODULE=dit_jax.prepare] launch/local.sh NUM_PROCESSES DEVICES_PER_PROCESS FLAGS..." >&2
  exit 2
fi
num=$1 devices=$2
shift 2
module=${MODULE:-dit_jax.train}
workdir=$(printf '%s\n' "$@" | sed -n 's/^--workdir=//p' | tail -1)
[[ -n $workdir ]] || workdir=$(printf '%s\n' "$@" | sed -n 's/^--data_dir=//p' | tail -1)
: "${workdir:?pass --workdir=DIR (or --data_dir=DIR to prepare)}"
mkdir -p "$workdir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# XLA flags of the caller's are kept; the device count is this script's.
other_flags=$(printf '%s' "${XLA_FLAGS:-}" | sed 's/--xla_force_host_platform_device_count=[0-9]*//g')
export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices $other_flags"
pids=()
for ((i = num - 1; i >= 0; i--)); do
  cmd=("${PYTHON:-python3}" -m "$module" "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$i")
  if ((i == 0)); then "${cmd[@]}" & else "${cmd[@]}" > "$workdir/process_$i.log" 2>&1 & fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
