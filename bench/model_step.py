"""Time and peak memory of one training step (forward + backward, no optimizer) of `UCPCLNet`, per preset.

    python bench/model_step.py    # both presets, batch 16: CPU float32, and CUDA bf16 autocast if present
    python bench/model_step.py --presets small --steps 5 --cpu-bf16

The step computes every output (both decoders, embeddings, rotation logits), a cross-entropy on each decoder
and on the rotation logits plus a term on the embeddings, and backpropagates; it is timed after one untimed
warm-up step, and the median (and the minimum) over `--steps` steps is reported, with the median process CPU
time of a step (summed over threads): on a busy machine the wall time grows with the load, the CPU time much
less.

Peak memory on the CPU is the growth of the process's peak resident set size,
`resource.getrusage(...).ru_maxrss`, from just before the first step (model and batch already built) to after
the last one. It is what the operating system actually handed the process during the steps -- activations,
gradients, the allocator's caches, oneDNN's scratch buffers -- which is what decides whether a run fits in
RAM. (The torch profiler's memory view counts only tensors from PyTorch's allocator and slows the steps it
watches.) `ru_maxrss` is a high-water mark that never comes down, so every configuration is measured in a
fresh subprocess. On CUDA the peak is `torch.cuda.max_memory_allocated()` over the timed steps (model,
gradients and activations).
"""

from __future__ import annotations
import argparse, json, platform, resource, statistics, subprocess, sys, time

import torch
import torch.nn.functional as F

from ucpcl.models import PRESETS, build_model, part_sizes


def _maxrss_mib() -> float:
    "Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 2**10


def _step(net, x, y, k, amp_dtype):
    "One forward and backward pass through every branch, with losses of the shapes training uses."
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = net(x)
        loss = F.cross_entropy(out.logits_c, y) + 0.4 * F.cross_entropy(out.logits_t, y)
        loss = loss + F.cross_entropy(out.rot_logits, k) + out.embeddings.float().square().mean()
    loss.backward()


def measure(preset: str, device: str, batch: int, steps: int, amp: str | None) -> dict:
    "Build the preset on `device`, time `steps` training steps at `batch`; memory as in the module docstring."
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build_model(preset).to(dev).train()
    cfg, amp_dtype = net.cfg, {None: None, "bf16": torch.bfloat16}[amp]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.img_size, cfg.img_size, generator=g).to(dev)
    y = torch.randint(0, cfg.num_classes, (batch, cfg.img_size, cfg.img_size), generator=g).to(dev)
    k = torch.randint(0, 4, (batch,), generator=g).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss0 = _maxrss_mib()
    _step(net, x, y, k, amp_dtype)
    net.zero_grad(set_to_none=False)
    sync()  # warm-up: kernels chosen, gradients allocated
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, cpu_times = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        _step(net, x, y, k, amp_dtype)
        sync()
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        net.zero_grad(set_to_none=False)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _maxrss_mib() - rss0
    return dict(
        preset=preset,
        device=device,
        dtype=amp or "fp32",
        params=sum(part_sizes(net).values()),
        batch=batch,
        img_size=cfg.img_size,
        threads=torch.get_num_threads(),
        median_s=statistics.median(times),
        min_s=min(times),
        cpu_s=statistics.median(cpu_times),
        peak_mib=peak,
        rss_before_mib=rss0 if dev.type == "cpu" else None,
        steps=steps,
    )


def _in_subprocess(preset, device, batch, steps, amp) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        preset,
        "--device",
        device,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
    ]
    if amp:
        cmd += ["--amp", amp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    cols = ["preset", "device", "dtype", "params", "input", "threads", "step median (s)", "step min (s)"]
    cols += ["CPU time (s)", "peak memory (MiB)"]
    head = "| " + " | ".join(cols) + " |"
    lines = [head, "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = (
            f"{r['peak_mib']:.0f} (RSS growth; RSS before {r['rss_before_mib']:.0f})"
            if r["device"] == "cpu"
            else f"{r['peak_mib']:.0f} (allocated)"
        )
        lines.append(
            f"| {r['preset']} | {r['device']} | {r['dtype']} | {r['params']:,} | "
            f"{r['batch']}x{r['img_size']}^2 | "
            f"{r['threads']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_s']:.2f} | {mem} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--cpu-bf16", action="store_true", help="also measure the CPU under bfloat16 autocast")
    ap.add_argument("--no-cuda", action="store_true", help="skip CUDA even when it is available")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    ap.add_argument("--amp", default=None, choices=["bf16"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # one measurement in this fresh process, printed as one JSON line
        print(json.dumps(measure(a.child, a.device, a.batch, a.steps, a.amp)))
        return
    runs = [(p, "cpu", None) for p in a.presets] + (
        [(p, "cpu", "bf16") for p in a.presets] if a.cpu_bf16 else []
    )
    if torch.cuda.is_available() and not a.no_cuda:
        runs += [(p, "cuda", "bf16") for p in a.presets]
    rows = []
    for p, dev, amp in runs:
        rows.append(_in_subprocess(p, dev, a.batch, a.steps, amp))
        print(
            f"measured {p} on {dev} ({amp or 'fp32'}): {rows[-1]['median_s']:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() and not a.no_cuda else "")
    )
    print(_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
