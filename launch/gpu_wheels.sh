#!/usr/bin/env bash
# Step 1 of the GPU check (BENCHMARKS.md, issue 18), on any machine with the package index: fetch the wheels
# that launch/gpu_check.sh installs, without their dependencies, on a GPU host that has none. The host is
# taken to have JAX with CUDA, Flax, Optax, Orbax, PyTorch with CUDA, transformers, absl-py, numpy, etils,
# protobuf and the like (this workplace's H100/H200 image); these are what dit_jax.bench and the kernel tests
# import beyond them.
#   launch/gpu_wheels.sh [DIR]     # default launch/wheels (ignored by git: pass it to the GPU host yourself)
# GPU_PYTHON: the host's Python version (default 3.12), for the wheels that hold compiled code.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$repo/launch/wheels}
py=${GPU_PYTHON:-3.12}
# The same pins as setup.py's install_requires (tests/test_gpu_check.py checks that they agree).
IN_SETUP=(
  ml-collections==1.1.0
  diffusers==0.42.1
  grain==0.2.18
  array-record==0.8.6
  tensorflow-datasets==4.9.10
)
# Not in setup.py: what those import that the host lacks, at the versions setup.py's set resolved to.
EXTRA=(
  immutabledict==4.3.1
  portpicker==1.6.0
  tensorflow-metadata==1.21.0
  toml==0.10.2
)
# Published as source only: built here into a pure-Python wheel.
FROM_SOURCE=(
  promise==2.3
)
mkdir -p "$dir"
python3 -m pip wheel -q --no-deps -w "$dir" "${FROM_SOURCE[@]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${IN_SETUP[@]}" "${EXTRA[@]}"
ls -l "$dir"
