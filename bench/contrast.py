"""Anchor sampling and pixel InfoNCE: the vectorised library against its plain-loop reference.

    python bench/contrast.py                  # the paper's shapes, CPU
    python bench/contrast.py --device cuda    # the same on a GPU
    python bench/contrast.py --help           # every size is an option

The paper's shapes: a batch of 16 images, 256-d embeddings on the 28 x 28 grid of layer2 (a
224 x 224 input), 4 classes and a memory of 500 entries per class; the paper does not give the
number of anchors, so 256 per class (M = 1024) by default. Each row is the median
wall time of `repeats` runs after one warm-up run, and the ratio loop / vectorised. Both
versions draw the same anchors (same generator seed), and the script checks that they give
the same loss before it prints anything. One intra-op thread by default: the loop version
cannot use more, so this is the conservative comparison, and on a shared machine timings with
several threads measure the scheduler as much as the code. This is a script, not a timed test:
`tests/test_contrast_bench.py` runs it at tiny sizes so that it keeps working.
"""

from __future__ import annotations
import argparse, statistics, time

import torch

from ucpcl.anchors import sample_anchors, sample_anchors_loop
from ucpcl.contrast import MemoryQueue, pixel_info_nce, pixel_info_nce_loop


def make_inputs(
    batch: int, dim: int, size: int, num_classes: int, memory_size: int, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, MemoryQueue]:
    "Embeddings (B, D, h, w) that require grad, labels (B, h, w) with ~1 in C+1 pixels ignored, a full queue."
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, size, size, generator=g).to(device).requires_grad_()
    labels = torch.randint(-1, num_classes, (batch, size, size), generator=g).to(device)
    queue = MemoryQueue(num_classes, dim, memory_size).to(device)
    queue.push(
        torch.randn(num_classes * memory_size, dim, generator=g).to(device),
        torch.arange(num_classes).repeat_interleave(memory_size).to(device),
    )
    return emb, labels, queue


def _median_seconds(fn, repeats: int, device: str) -> float:
    "Median wall time of `fn()` over `repeats` runs, after one warm-up run."
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def benchmark(
    batch: int = 16,
    dim: int = 256,
    size: int = 28,
    num_classes: int = 4,
    memory_size: int = 500,
    per_class: int = 256,
    tau: float = 0.07,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict]:
    "Time sampling, InfoNCE, both, and both with backward, vectorised and loop; one dict per row (ms)."
    emb, labels, queue = make_inputs(batch, dim, size, num_classes, memory_size, seed, device)
    gen = lambda: torch.Generator().manual_seed(seed)  # both versions draw the same anchors
    anchors, anchor_labels = sample_anchors(emb, labels, per_class, num_classes, gen())
    fast = pixel_info_nce(anchors, anchor_labels, queue, tau)
    slow = pixel_info_nce_loop(*sample_anchors_loop(emb, labels, per_class, num_classes, gen()), queue, tau)
    if not torch.allclose(fast, slow, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"vectorised loss {fast.item():.6f} != loop loss {slow.item():.6f}")
    versions = {
        "vectorised": (sample_anchors, pixel_info_nce),
        "loop": (sample_anchors_loop, pixel_info_nce_loop),
    }

    def parts(sample, loss):
        both = lambda: loss(*sample(emb, labels, per_class, num_classes, gen()), queue, tau)
        return {
            "sampling": lambda: sample(emb, labels, per_class, num_classes, gen()),
            "InfoNCE": lambda: loss(anchors, anchor_labels, queue, tau),
            "sampling + InfoNCE": both,
            "sampling + InfoNCE + backward": lambda: both().backward(),
        }

    timed = {
        v: {k: 1000 * _median_seconds(f, repeats, device) for k, f in parts(*fns).items()}
        for v, fns in versions.items()
    }
    return [
        {
            "part": k,
            "vectorised_ms": timed["vectorised"][k],
            "loop_ms": timed["loop"][k],
            "ratio": timed["loop"][k] / timed["vectorised"][k],
            "anchors": len(anchor_labels),
        }
        for k in timed["loop"]
    ]


def format_table(rows: list[dict]) -> str:
    "The rows as a small fixed-width table."
    lines = [f"{'part':<31}{'vectorised ms':>14}{'loop ms':>11}{'ratio':>8}"]
    lines += [
        f"{r['part']:<31}{r['vectorised_ms']:>14.2f}{r['loop_ms']:>11.2f}{r['ratio']:>7.1f}x" for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--size", type=int, default=28, help="side of the feature grid")
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--memory-size", type=int, default=500)
    p.add_argument("--per-class", type=int, default=256)
    p.add_argument("--tau", type=float, default=0.07)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads; 0 leaves PyTorch's default")
    a = p.parse_args(argv)
    threads = torch.get_num_threads()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        rows = benchmark(
            a.batch, a.dim, a.size, a.num_classes, a.memory_size, a.per_class, a.tau, a.repeats, a.device
        )
        shapes = f"{a.batch} images, {a.dim}-d embeddings on {a.size}x{a.size}, {a.num_classes} classes"
        queue = f"{a.memory_size} per class in the queue, {a.per_class} anchors per class"
        run = f"device {a.device}, {torch.get_num_threads()} thread(s), median of {a.repeats}"
        print(f"{shapes}, {queue} (M = {rows[0]['anchors']}); {run}")
        print(format_table(rows))
    finally:
        torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    main()
