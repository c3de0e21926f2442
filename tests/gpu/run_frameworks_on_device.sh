#!/usr/bin/env bash
# Device-machine wrapper for framework_gpu_check.py (issue 12): installs the carried wheels
# (.whl/, e.g. onnxruntime or onnxruntime-gpu when the image lacks them and they fit the carry
# limit), builds the Cython extensions for the machine's Python, runs the check and writes
# $OUT/framework_gpu.json (copy it to benchmarks/results/).
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD/src:$PWD:/tmp/site"
python3 setup.py -q build_ext --inplace >/dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, sys; print('torch', torch.__version__, torch.cuda.is_available())"
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())" || true
python3 tests/gpu/framework_gpu_check.py --json "${OUT:-/tmp}/framework_gpu.json"
