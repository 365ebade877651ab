#!/usr/bin/env bash
# The one prepared GPU check: the `paper` preset (ResNet-50, 224 px, batch 16 with 8 labeled) of the full method on
# the embedded cardiac phantom, bf16 autocast, a fixed number of timed iterations with DataLoader workers; prints
# seconds per iteration split by part, iterations/s, peak GPU memory and the projected time of the paper's 6000
# iterations, eager and compiled.
# Usage (on a CUDA machine, from the repository root):  bash bench/gpu.sh [STEPS] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-60}
WORKERS=${2:-8}
make env >/dev/null
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: bench/gpu.sh needs a GPU'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)"
.venv/bin/python bench/train_step.py --presets paper --device cuda --amp bf16 --steps "$STEPS" --warmup 10 --workers "$WORKERS" --project 6000
# the same with the network compiled (torch.compile; the compiling happens in the warm-up steps)
.venv/bin/python bench/train_step.py --presets paper --device cuda --amp bf16 --steps "$STEPS" --warmup 10 --workers "$WORKERS" --project 6000 --compile
.venv/bin/python bench/contrast.py --device cuda
