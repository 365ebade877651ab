"""Two decoder parts of `ucpcl.models` against the layers they stand for, forward and backward, at the
`paper` preset's shapes (batch 16, 224 px), float32 on the CPU.

    python bench/decoder_parts.py              # all shapes, 3 rounds, the threads torch chooses
    python bench/decoder_parts.py --batch 2 --rounds 1

- `up_conv` (a 3x3 convolution of a nearest x2 upsampling, done on the small input as four 2x2 phase
  kernels) against `interpolate` then `conv2d`, for the five stages of the CNN decoder: input channels ->
  output channels at the input's side. `UpBlock` uses `up_conv` from `UP_CONV_MIN_CHANNELS` input channels.
- `fused_mlp` (the Swin MLP a block of tokens at a time, keeping only its input) against the layers
  (Linear, GELU, Linear), at the token grids and widths of the Transformer decoder's three stages.

Each case runs once untimed, then is timed in alternation with its layers, `--rounds` times; the table
gives the fastest round of each (seconds, forward + backward with a gradient of ones) and their ratio.
"""

from __future__ import annotations
import argparse, time

import torch
import torch.nn.functional as F

from ucpcl.models import fused_mlp, up_conv

# (input channels, output channels, input side) of the paper's CNN decoder stages, 1/32 -> 1/2
UP_SHAPES = [(2048, 256, 7), (256, 128, 14), (128, 64, 28), (64, 32, 56), (32, 16, 112)]
# (tokens side, width) of the Transformer decoder's stages at 224 px; hidden width 4x
MLP_SHAPES = [(56, 96), (28, 192), (14, 384)]


def _time(f, *args) -> float:
    t = time.perf_counter()
    y = f(*args)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t


def _race(ours, theirs, args, rounds: int) -> tuple[float, float]:
    _time(ours, *args), _time(theirs, *args)  # warm-up: kernels chosen, buffers allocated
    a, b = [], []
    for _ in range(rounds):
        a.append(_time(ours, *args))
        b.append(_time(theirs, *args))
    return min(a), min(b)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    cl = torch.channels_last
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, batch {a.batch}, float32")
    print("| part | shape | ucpcl (s) | layers (s) | ratio |\n|---|---|---:|---:|---:|")
    layers = lambda x, w: F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
    for cin, cout, side in UP_SHAPES:
        x = torch.randn(a.batch, cin, side, side).to(memory_format=cl).requires_grad_()
        w = (torch.randn(cout, cin, 3, 3) / (3 * cin**0.5)).to(memory_format=cl).requires_grad_()
        ours, theirs = _race(up_conv, layers, (x, w), a.rounds)
        print(f"| up_conv | {cin} -> {cout} at {side}^2 | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    for side, dim in MLP_SHAPES:
        fc1, fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)
        x = torch.randn(a.batch, side, side, dim, requires_grad=True)
        ours, theirs = _race(lambda x: fused_mlp(x, fc1, fc2), lambda x: fc2(F.gelu(fc1(x))), (x,), a.rounds)
        shape = f"{side}^2 tokens of {dim}"
        print(f"| fused_mlp | {shape} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
