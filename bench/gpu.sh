#!/usr/bin/env bash
# The one prepared GPU check: the `paper` preset (ResNet-50, 224 px, batch 16 with 8 labeled) of the full method on
# the embedded cardiac phantom, bf16 autocast, a fixed number of timed iterations with DataLoader workers; prints
# seconds per iteration split by part, iterations/s, peak GPU memory and the projected time of the paper's 6000
# iterations: eager, eager with cuDNN's autotuner, and compiled; then the contrast branch's own benchmark.
# Usage (on a CUDA machine, from the repository root):  bash bench/gpu.sh [STEPS] [WORKERS]
# PYTHON=python3 uses a Python that already has PyTorch with CUDA and runs ucpcl from this checkout (no install,
# for a machine that cannot reach a package index; fastcore and nibabel must be importable); by default
# `make env` creates .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
WORKERS=${2:-8}
if [ -n "${PYTHON:-}" ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  make env >/dev/null
  PYTHON=.venv/bin/python
fi
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
"$PYTHON" -c "import torch, ucpcl.train; assert torch.cuda.is_available(), 'no CUDA device: bench/gpu.sh needs a GPU'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"
run() { "$PYTHON" bench/train_step.py --presets paper --device cuda --amp bf16 --steps "$STEPS" --warmup 10 \
  --workers "$WORKERS" --project 6000 "$@"; }
run
# cuDNN picks the fastest convolution algorithm for each shape (the shapes of a run are fixed)
run --cudnn-benchmark
"$PYTHON" bench/contrast.py --device cuda
# the network compiled (torch.compile; the compiling happens in the warm-up steps); last, since it takes longest
run --cudnn-benchmark --compile || echo "the compiled run failed (above)"
