#!/usr/bin/env bash
# The one prepared GPU check: the `paper` preset (ResNet-50, 224 px, batch 16 with 8 labeled) of the full method on
# the embedded cardiac phantom, bf16 autocast, a fixed number of timed iterations with DataLoader workers; prints
# seconds per iteration split by part, iterations/s, peak GPU memory and the projected time of the paper's 6000
# iterations: eager, compiled (time-limited), the contrast branch's own benchmark, and eager with cuDNN's autotuner.
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
STEP=(bench/train_step.py --presets paper --device cuda --amp bf16 --steps "$STEPS" --warmup 10 --workers "$WORKERS"
  --project 6000)
run() { "$PYTHON" "${STEP[@]}" "$@"; }
run
# the network compiled (torch.compile; the compiling happens in the warm-up steps, whose time is printed); it
# fuses the elementwise work, which matters because the eager step leaves the GPU idle most of the time waiting
# for launches (nbs/18_performance). At most COMPILE_LIMIT seconds, so that a lease still sees the rest.
# (timeout signals its whole process group, so the measuring subprocess stops with it)
timeout "${COMPILE_LIMIT:-420}" "$PYTHON" "${STEP[@]}" --compile ||
  echo "the compiled run failed or took longer than ${COMPILE_LIMIT:-420} s (above)"
"$PYTHON" bench/contrast.py --device cuda
# cuDNN's autotuner (it changed nothing on an H200, 2026-12-04: the convolutions are not what the step waits for)
run --cudnn-benchmark
