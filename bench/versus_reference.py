"""A training step of ucpcl's network against the reference implementation's, side by side on the CPU.

    python bench/versus_reference.py           # ucpcl only; says what the comparison needs
    python bench/versus_reference.py --reference ~/src/UGPCL --rounds 5

The reference implementation is the authors' public repository (UGPCL by taovv); pass the path of a checkout
with `--reference`. Its model needs the packages its requirements pin (segmentation-models-pytorch 0.2.0, timm
0.4.12, einops), importable by this Python; point `--reference-path` at a folder holding them if they are not
installed.

Both networks are built at the paper's settings: ResNet-50 encoder, CNN decoder (256, 128, 64, 32, 16), Swin
decoder (96, 192, 384, 768) with windows of 7, projection head on layer2 (256-d), rotation head, 4 classes,
random initialisation. A step is what `bench/model_step.py` times: one forward pass of every output, the same
losses (cross-entropy of both decoders, of the rotation logits, and a square term on the embeddings) and the
backward pass, at batch 16, 224 px, float32, `--threads` threads (default 2). The input is a grey image for
ucpcl (its encoder convolves it as 3 equal channels) and the same image repeated to 3 channels for the
reference.

Each measurement runs in a fresh subprocess: it builds the network and the batch, runs `--warmup` untimed
steps, then times `--steps` steps, and reports the median wall time and the median process CPU time of a step
(summed over threads), and the growth of the peak resident set size from just before the first step to after
the last (as in bench/model_step.py). The two implementations alternate for `--rounds` rounds, so that a
change of load on a shared machine hits both alike; the table gives, per implementation, the median over
rounds and the range (min-max), and the ratios ucpcl / reference of the medians. On a loaded machine the wall
time grows with the load; the CPU time much less, which makes its ratio the steadier of the two.

Measured on 2026-12-03 (2 cores shared with five other jobs, torch 2.14.1; nbs/18_performance.ipynb has the
table), with `--reference UGPCL --reference-path SITE --rounds 3` (SITE holding the pinned packages):
median (range) CPU time of a step, ucpcl 19.73 s (19.72-21.20) against the reference's 22.11 s
(19.47-22.27) over 3 alternating rounds, 0.89x; peak RSS growth 5783 MiB (5632-5890) against 5743 MiB
(5686-5832), 1.01x. Before the layout changes of ucpcl.models (main at 07141f3, 2 rounds): 0.91x CPU time,
1.01x peak memory. Wall times (1.16x and 1.14x) measured the machine's load more than the code. With
`--compile` (ucpcl's network through torch.compile, compiled in the untimed steps; 2026-12-03 evening, idle
machine, `--warmup 2 --rounds 2`): ucpcl 26.14 s CPU (24.90-27.39) against the reference's 23.56 s
(21.62-25.50), 1.11x, wall 1.39x; peak RSS growth 4712 MiB (4493-4931) against 5708 MiB (5602-5814), 0.83x.
Eager, right after (`--warmup 2 --rounds 2`): 0.98x CPU time, 0.96x wall, 1.02x peak memory. On the CPU a
compiled step saves memory and costs time (nbs/18_performance.ipynb has the profile).

`--reuse-memory` (2026-12-04, idle machine, commit 7d783e4, `--rounds 2` twice per setting, 4 processes a
side): with the system's allocator on both sides ucpcl took 0.77x the reference's CPU time (18.50 against
23.93 s) and 0.74x its peak memory; with `reuse_freed_memory` on both sides 1.01x the CPU time (17.93 against
17.84 s) and 0.71x the memory. The reference's step loses a quarter of its time to page faults of freshly
mapped memory, ucpcl's a few per cent: that, more than arithmetic, was the time ucpcl saved.

`--profile` profiles one more step per process and sums its operators' own time by kind (convolutions, matrix
products, batch norm, other). 2026-12-04, idle machine, de44165 plus this option: with the system's allocator
(5 processes a side) ucpcl took 0.70x the reference's CPU time, 0.67x its wall time, 0.75x its peak memory;
with reuse on both sides (2 a side) 0.90x, 0.93x and 0.67x, and ucpcl's convolutions, products and batch norm
alone came to 0.84x the reference's whole profiled step, a bound that no other change can pass.
"""

from __future__ import annotations
import argparse, json, statistics, subprocess, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

from model_step import _maxrss_mib

NEEDS = (
    "a checkout of the reference implementation (git clone of the public UGPCL repository by taovv), "
    "passed as --reference PATH, and its model's packages (segmentation-models-pytorch==0.2.0, "
    "timm==0.4.12, einops) importable, e.g. pip install --target DIR ... and --reference-path DIR"
)


def _ucpcl(batch: int, size: int, channels_last: bool, compiled: bool = False):
    "ucpcl's paper network and a step function on a grey batch; `compiled`: through torch.compile."
    from ucpcl.models import build_model

    net = build_model("paper", img_size=size).train()
    x = torch.randn(batch, 1, size, size)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    call = torch.compile(net) if compiled else net

    def outputs():
        o = call(x)
        return o.logits_c, o.logits_t, o.rot_logits, o.embeddings

    return net, outputs


def _reference(batch: int, size: int, root: str):
    "The reference's UNetTF at the same settings and a step function on the same batch as RGB."
    sys.path.insert(0, root)
    from codes.models.unet_tf import UNetTF  # the reference repository's model

    kw = dict(encoder_weights=None, in_channels=3, classes=4, contrast_embed=True, img_size=size)
    net = UNetTF(**kw, patches_resolution=[size // 4, size // 4]).train()
    x = torch.randn(batch, 1, size, size).repeat(1, 3, 1, 1)

    def outputs():
        o = net(x, "cpu")
        return o["seg"], o["seg_tf"], o["cls"], o["embed"]

    return net, outputs


def measure(impl: str, batch: int, size: int, steps: int, warmup: int, threads: int, opts: dict) -> dict:
    "In this process: build `impl` and time `steps` steps after `warmup` untimed ones."
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if opts.get("reuse_memory", "none") in ("both", impl):
        from ucpcl.core import reuse_freed_memory

        reuse_freed_memory()  # as ucpcl's trainer does on the CPU
    if impl == "ucpcl":
        net, outputs = _ucpcl(batch, size, opts.get("channels_last", False), opts.get("compile", False))
    else:
        net, outputs = _reference(batch, size, opts["reference"])
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (batch, size, size), generator=g)
    k = torch.randint(0, 4, (batch,), generator=g)

    def step():
        seg, seg_tf, rot, emb = outputs()
        loss = F.cross_entropy(seg, y) + 0.4 * F.cross_entropy(seg_tf, y)
        (loss + F.cross_entropy(rot, k) + emb.square().mean()).backward()
        net.zero_grad(set_to_none=False)

    rss0 = _maxrss_mib()
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    params = sum(p.numel() for p in net.parameters())
    wall_s, cpu_s = statistics.median(times), statistics.median(cpu)
    r = dict(impl=impl, wall_s=wall_s, cpu_s=cpu_s, peak_mib=_maxrss_mib() - rss0, params=params)
    return r | (profile_step(step) if opts.get("profile") else {})


KINDS = {  # operator kinds of a step's arithmetic, by a part of the operator's name
    "conv_s": ("convolution", "conv2d"),
    "matmul_s": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::addmv"),
    "batchnorm_s": ("batch_norm",),
}


def kind(name: str) -> str:
    "The KINDS key of an operator's name (matrix products by the whole name), or 'other_s'."
    for k, parts in KINDS.items():
        if any(name == p if k == "matmul_s" else p in name for p in parts):
            return k
    return "other_s"


def profile_step(step) -> dict:
    "One more step under torch.profiler: its operators' self time (s) summed by `kind`, and their total."
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    out = dict.fromkeys([*KINDS, "other_s"], 0.0)
    for e in prof.key_averages():
        out[kind(e.key)] += e.self_cpu_time_total / 1e6
    return out | {"profiled_s": sum(out.values())}


def _child(impl: str, a) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, "--batch", str(a.batch), "--size", str(a.size)]
    cmd += ["--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
    cmd += ["--reference", a.reference] if a.reference else []
    cmd += ["--channels-last"] if a.channels_last else []
    cmd += ["--compile"] if a.compile else []
    cmd += ["--reuse-memory", a.reuse_memory] + (["--profile"] if a.profile else [])
    pypath = [a.reference_path] if a.reference_path else []
    env = None
    if pypath:
        import os

        env = {**os.environ, "PYTHONPATH": os.pathsep.join(pypath + [os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{impl}: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _spread(xs: list[float], fmt: str) -> str:
    med = statistics.median(xs)
    return f"{med:{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})" if len(xs) > 1 else f"{med:{fmt}}"


def table(rows: list[dict]) -> str:
    "Median (min-max) over rounds per implementation, and the ratios ucpcl / reference of the medians."
    by = {i: [r for r in rows if r["impl"] == i] for i in ("ucpcl", "reference")}
    head = "| implementation | parameters | rounds | step wall (s) | step CPU (s) | peak RSS growth (MiB) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for impl, rs in by.items():
        if rs:
            cells = [_spread([r[k] for r in rs], f) for k, f in (("wall_s", ".2f"), ("cpu_s", ".2f"))]
            cells.append(_spread([r["peak_mib"] for r in rs], ".0f"))
            lines.append(f"| {impl} | {rs[0]['params']:,} | {len(rs)} | " + " | ".join(cells) + " |")
    if all("profiled_s" in r for r in rows):
        lines += ["", profile_table(by)]
    if by["reference"]:
        med = {i: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "peak_mib")}
               for i, rs in by.items()}  # fmt: skip
        q = {k: med["ucpcl"][k] / med["reference"][k] for k in med["ucpcl"]}
        ratio = f"{q['wall_s']:.2f}x wall, {q['cpu_s']:.2f}x CPU time, {q['peak_mib']:.2f}x peak memory"
        lines.append(f"\nucpcl / reference (medians): {ratio}")
    return "\n".join(lines)


def profile_table(by: dict) -> str:
    "Medians over rounds of the profiled step's self time by kind, and the share of the shared arithmetic."
    cols = [*KINDS, "other_s", "profiled_s"]
    names = ("convolutions", "matrix products", "batch norm", "other", "profiled step")
    lines = ["| implementation | " + " | ".join(f"{n} (s)" for n in names) + " |", "|---|" + "---:|" * 5]
    med = {i: {k: statistics.median(r[k] for r in rs) for k in cols} for i, rs in by.items() if rs}
    for impl, m in med.items():
        lines.append(f"| {impl} | " + " | ".join(f"{m[k]:.3f}" for k in cols) + " |")
    arith = {i: m["profiled_s"] - m["other_s"] for i, m in med.items()}  # convolutions, products, batch norm
    lines.append("")
    for impl, m in med.items():
        share = 100 * arith[impl] / m["profiled_s"]
        lines.append(f"{impl}: convolutions, matrix products and batch norm {share:.0f} % of its step")
    if len(med) == 2:  # what ucpcl's step would take with every other operator free, against the reference's
        floor = arith["ucpcl"] / med["reference"]["profiled_s"]
        lines.append(f"ucpcl's arithmetic alone / the reference's whole step: {floor:.2f}x (a lower bound)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", help="path of a checkout of the reference repository (UGPCL)")
    ap.add_argument("--reference-path", help="a folder to put on PYTHONPATH for the reference's packages")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds, one fresh process per side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="image side in pixels (the paper: 224)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="ucpcl in channels_last memory format")
    ap.add_argument("--compile", action="store_true", help="ucpcl through torch.compile (in the warm-up)")
    ap.add_argument(
        "--reuse-memory",
        choices=("none", "both", "ucpcl"),
        default="none",
        help="whose processes call ucpcl.core.reuse_freed_memory first: none (the system allocator), both "
        "(equal allocators), ucpcl (as each trains out of the box: ucpcl's trainer calls it on the CPU)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, profile one more and sum its operators' self time by kind",
    )
    ap.add_argument("--json", help="also write every measurement to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # one measurement in this fresh process, printed as one JSON line
        opts = dict(reference=a.reference, channels_last=a.channels_last, compile=a.compile)
        opts |= dict(reuse_memory=a.reuse_memory, profile=a.profile)
        print(json.dumps(measure(a.child, a.batch, a.size, a.steps, a.warmup, a.threads, opts)))
        return
    if a.reference and not (Path(a.reference) / "codes" / "models" / "unet_tf.py").is_file():
        sys.exit(f"--reference {a.reference}: no codes/models/unet_tf.py there; the comparison needs {NEEDS}")
    if not a.reference:
        print(f"ucpcl only: the comparison with the reference implementation needs {NEEDS}.", file=sys.stderr)
    impls = ["ucpcl", "reference"] if a.reference else ["ucpcl"]
    rows = []
    for k in range(a.rounds):
        for impl in impls if k % 2 == 0 else impls[::-1]:  # alternate which side goes first
            rows.append(_child(impl, a))
            r = rows[-1]
            print(f"round {k + 1} {impl}: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU", file=sys.stderr)
    cl = (", ucpcl channels_last" if a.channels_last else "") + (", ucpcl compiled" if a.compile else "")
    cl += {"none": "", "both": ", both reuse freed memory", "ucpcl": ", ucpcl reuses freed memory"}[
        a.reuse_memory
    ]
    print(f"torch {torch.__version__}, batch {a.batch}, {a.size} px, float32, {a.threads} threads{cl}")
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
