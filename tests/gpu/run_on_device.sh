#!/usr/bin/env bash
# Device-machine wrapper for gpu_placement_check.py: installs the carried wheels (.whl/) that
# the GPU image lacks, builds the Cython extensions for its Python, runs the check.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD/src:$PWD:/tmp/site"
python3 setup.py -q build_ext --inplace >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 tests/gpu/gpu_placement_check.py --json "${OUT:-/tmp}/gpu_placement.json"
