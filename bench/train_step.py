"""Where a training step of the full method goes: forward, contrast branch, backward, optimiser, data loading.

    python bench/train_step.py                                  # small and paper presets, CPU, batch 16
    python bench/train_step.py --presets paper --device cuda --amp bf16 --steps 50 --workers 8 --project 6000
    python bench/train_step.py --presets paper --device cuda --amp bf16 --compile   # the network compiled

Each preset runs the real `Trainer` (data, augmentation, two-stream batches, the UCPCL method with the pixel
contrast switched on from the first step) on the embedded cardiac phantom, in a fresh subprocess. After
`--warmup` untimed steps, `--steps` steps are timed: the wall time of `Trainer.step` (synchronised on CUDA)
and, under PyTorch's profiler, the time inside the step's `record_function` labels: `forward` (both decoders,
heads and losses; it contains the contrast branch), `contrast` (Eq. 6-9: uncertainty, pseudo labels, anchor
sampling, InfoNCE, and the queue update after the step), `backward` and `optimizer`. "forward" in the table
excludes the contrast branch. On CUDA a label's time is its span on the GPU's timeline (idle gaps included),
and the backward pass's kernels are launched from autograd's own thread, outside its label, so that column
reads n/a; "GPU busy" is the kernels' own time per step, summed, so that s/iter - GPU busy is the time the GPU
waits for the CPU to hand it work. Data loading is timed separately, as the time the DataLoader takes to
deliver a batch with `--workers` workers. Peak memory: on the CPU the peak resident set size of the measuring
process (`ru_maxrss`: PyTorch itself, model, optimiser state, data and the warm-up and timed steps'
activations), which is what decides whether a run fits in RAM; on CUDA `torch.cuda.max_memory_allocated()`
over the timed steps. With `--compile` the run has `compile=True` (`ucpcl.train.compile_networks`): the
compiling happens in the warm-up steps, which must be at least 1. A script, not a timed test; the figures
depend on the machine.
"""

from __future__ import annotations
import argparse, json, platform, resource, statistics, subprocess, sys, tempfile, time
from pathlib import Path


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if platform.system() == "Darwin" else r / 2**10


def measure(
    preset: str,
    device: str,
    batch: int,
    steps: int,
    warmup: int,
    amp: str,
    workers: int,
    data: str,
    compiled: bool = False,
    cudnn_benchmark: bool = False,
    top: int = 0,
) -> dict:
    "Run in this process: time `steps` training steps of `preset` and their parts."
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from ucpcl.core import scratch
    from ucpcl.train import TrainConfig, Trainer

    cfg = TrainConfig(
        data_root=data,
        labeled=4,
        preset=preset,
        pretrained="none",  # the step's time does not depend on the starting weights
        batch_size=batch,
        labeled_bs=batch // 2,
        contrast_start=0.0,
        iterations=warmup + steps + 1,
        device=device,
        amp=amp,
        num_workers=workers,
        compile=compiled,
        out=str(scratch("ucpcl-bench-")),
    )
    t = Trainer(cfg)
    cuda = t.device.type == "cuda"
    torch.backends.cudnn.benchmark = cudnn_benchmark  # after Trainer, which may ask for deterministic kernels
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    it = iter(t.loader(0))
    t0 = time.perf_counter()
    for i in range(warmup):
        t.step(next(it), i)
    sync()
    warmup_s = time.perf_counter() - t0  # with --compile, the compiling is in here
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    data_s, step_s = [], []
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for i in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            b = next(it)
            data_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            t.step(b, i)
            sync()
            step_s.append(time.perf_counter() - t0)
    if top:  # the operators that take the most device time (CPU time on the CPU), to stderr
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        print(
            prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60), file=sys.stderr
        )
    parts = {}
    for e in prof.key_averages():
        if e.key in ("forward", "contrast", "backward", "optimizer"):
            us = e.device_time_total if cuda and e.device_time_total > 0 else e.cpu_time_total
            parts[e.key] = us / 1e6 / steps
    if cuda:  # the kernels' own time, as the profiler's table sums it (user annotations left out)
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels if not getattr(e, "is_user_annotation", False))
        parts["gpu_busy"] = busy / 1e6 / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _maxrss_mib()
    return {
        "preset": preset,
        "device": str(t.device),
        "amp": t.amp,
        "compiled": compiled,
        "cudnn_benchmark": cudnn_benchmark,
        "batch": batch,
        "workers": workers,
        "threads": torch.get_num_threads(),
        "warmup_s": warmup_s,
        "step": statistics.median(step_s),
        "data": statistics.median(data_s),
        **parts,
        "peak_mib": peak,
        "gpu": torch.cuda.get_device_name(t.device) if cuda else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["small", "paper"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", default="auto", help="auto (bf16 on CUDA), bf16 or off")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="compile the network (in the warm-up steps)")
    ap.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its convolution algorithms"
    )
    ap.add_argument(
        "--top", type=int, default=0, help="print the profiler's table of the TOP costliest operators"
    )
    ap.add_argument("--project", type=int, default=6000, help="iterations to project the run time for")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data-root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.compile and a.warmup < 1:
        sys.exit("--compile needs --warmup 1 or more: the first step compiles the network")
    if a.child:  # one measurement, in a fresh process
        args = (a.child, a.device, a.batch, a.steps, a.warmup, a.amp, a.workers, a.data_root, a.compile)
        args += (a.cudnn_benchmark, a.top)
        print(json.dumps(measure(*args)))
        return
    from ucpcl.phantoms import write_phantom

    data = str(write_phantom("cardiac", Path(tempfile.gettempdir()) / "ucpcl-bench-phantom", seed=0))
    rows = []
    for p in a.presets:
        cmd = (
            [
                sys.executable,
                __file__,
                "--child",
                p,
                "--device",
                a.device,
                "--batch",
                str(a.batch),
                "--steps",
                str(a.steps),
                "--warmup",
                str(a.warmup),
                "--amp",
                a.amp,
                "--workers",
                str(a.workers),
                "--data-root",
                data,
            ]
            + (["--compile"] if a.compile else [])
            + (["--cudnn-benchmark"] if a.cudnn_benchmark else [])
        )
        cmd += ["--top", str(a.top)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{p}: failed\n{r.stderr[-3000:]}")
        if a.top:
            print(r.stderr)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    labeled = f"batch {a.batch} ({a.batch // 2} labeled)"
    print(f"train step of the full method, {labeled}, {a.steps} timed steps after {a.warmup}; seconds")
    cols = [
        "preset",
        "device",
        "amp",
        "s/iter",
        "it/s",
        "forward",
        "contrast",
        "backward",
        "optimizer",
        "GPU busy",
        "data/batch",
    ]
    cols += ["contrast share", "peak MiB", "projected"]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in rows:
        fwd = r.get("forward", float("nan")) - r.get("contrast", 0.0)
        share = r.get("contrast", 0.0) / r["step"]
        proj = a.project * (r["step"] + (r["data"] if r["workers"] == 0 else 0)) / 60
        device = f"{r['device']}{' ' + r['gpu'] if r['gpu'] else ''}"
        parts = [f"{r.get(k, 0):.3f}" for k in ("contrast", "backward", "optimizer")]
        if r["gpu"]:  # no backward label on the GPU's timeline (see the docstring)
            parts[1] = "n/a"
        parts.append(f"{r['gpu_busy']:.3f}" if "gpu_busy" in r else "n/a")
        amp = ("bf16" if r["amp"] else "fp32") + (", compiled" if r["compiled"] else "")
        amp += ", cudnn.benchmark" if r.get("cudnn_benchmark") else ""
        cells = [r["preset"], device, amp, f"{r['step']:.3f}", f"{1 / r['step']:.2f}", f"{fwd:.3f}"]
        cells += parts + [f"{r['data']:.3f}", f"{share:.1%}", f"{r['peak_mib']:.0f}"]
        cells.append(f"{proj:.1f} min / {a.project} it")
        print("| " + " | ".join(cells) + " |")
    overlap = f"'projected' = {a.project} x (step + data when loading is not overlapped)"
    print(f"({platform.node()}, {rows[0]['threads']} threads; {overlap})")
    warm = ", ".join(f"{r['preset']} {r['warmup_s']:.1f} s" for r in rows)
    print(f"the {a.warmup} warm-up steps took {warm}" + (" (compiling included)" if a.compile else ""))


if __name__ == "__main__":
    main()
