#!/usr/bin/env bash
# Issue 18's accelerator figures in one run (launch/gpu_check.py says what and in what order).
#   launch/gpu_check.sh [--budget_s=480] [--out=DIR] [--wheels=DIR] [--only=NAME,...]   # on the GPU host
#   launch/gpu_check.sh --dry --out=DIR                                                 # CPU, toy sizes
# For a host without a package index: installs the wheels that launch/gpu_wheels.sh fetched (default
# launch/wheels; none there: the environment must have them) without their dependencies into a folder of its
# own, and runs this checkout from PYTHONPATH (no `pip install -e .`, whose build would need the index).
# Results: OUT/gpu_check.jsonl and OUT/gpu_check.log (OUT: --out, else $OUT, else ./gpu_check_out).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
wheels=$repo/launch/wheels
for arg in "$@"; do
  case $arg in --wheels=*) wheels=${arg#--wheels=} ;; esac
done
site=${TMPDIR:-/tmp}/dit_jax_gpu_check_site
export GPU_CHECK_INSTALLED="none: no wheels in $wheels"
shopt -s nullglob
found=("$wheels"/*.whl)
if ((${#found[@]})); then
  if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${found[@]}"; then
    GPU_CHECK_INSTALLED="${#found[@]} wheels from $wheels into $site: $(cd "$wheels" && echo *.whl)"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  else
    GPU_CHECK_INSTALLED="failed: pip could not install the wheels in $wheels"
  fi
fi
export PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$python" "$repo/launch/gpu_check.py" "$@"
