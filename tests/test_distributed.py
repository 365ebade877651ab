"""DDP on the CPU: two gloo processes agree with each other and with one process on the same global batch."""

import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from ucpcl.phantoms import write_phantom

SCRIPT = """
import sys, torch
from ucpcl.train import TrainConfig, Trainer
from ucpcl.distributed import world, cleanup
root, out, contrast, stop, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
resume, exact = mode == "resume", mode == "exact"
tiny = dict(labeled=2, preset="small", img_size=32, iterations=4, batch_size=8, labeled_bs=4, per_class=8)
tiny |= dict(memory_size=16, contrast_start=0.0, eval_every=2, save_every=2, log_every=1, device="cpu")
cfg = TrainConfig(data_root=root, out=out, contrast=contrast, freeze_bn=exact, **tiny)
t = Trainer(cfg)
if exact:  # no dropout either: what is left to differ is the batch-pooled Dice of Eq. 4
    for m in t.method.modules():
        if isinstance(m, torch.nn.Dropout): m.p = 0.0
import os; os.makedirs(out, exist_ok=True)
if exact and world()[0] == 0: torch.save(t.method.state_dict(), f"{out}/init.pt")
t.fit(progress=False, resume=resume, stop_after=stop if stop > 0 else None)
torch.save(t.method.state_dict(), f"{out}/state-rank{world()[0]}.pt")
cleanup()
"""


@pytest.fixture(scope="module")
def setup(module_tmp):
    d = module_tmp
    (d / "run.py").write_text(SCRIPT)
    return d, write_phantom("cardiac", d / "data", seed=0, num_patients=(4, 2, 2))


def run(d, root, out, nproc, contrast="uncertainty", stop=0, mode="plain", port=29541):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(d),
    }  # torchrun's own temporary folders stay in the test's folder
    if nproc == 1:
        cmd = [sys.executable, str(d / "run.py")]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            str(d / "run.py"),
        ]
    r = subprocess.run(
        cmd + [str(root), str(out), contrast, str(stop), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return [torch.load(p, weights_only=True) for p in sorted(Path(out).glob("state-rank*.pt"))]


@pytest.fixture(scope="module")
def two(setup):
    "A 2-process run of the full method (4 iterations), shared by the tests below."
    d, root = setup
    return run(d, root, d / "two", 2)


def test_two_processes_hold_the_same_weights_and_queue(setup, two):
    d, _ = setup
    a, b = two
    assert a.keys() == b.keys() and int(a["queue.count"].sum()) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    logs = (d / "two" / "log.csv").read_text().splitlines()
    assert (
        len(logs) == 5 and not (d / "two" / "state-rank2.pt").exists()
    )  # one writer: rank 0 wrote the log once
    env = json.loads((d / "two" / "env.json").read_text())
    assert env["processes"] == 2


def test_two_processes_match_one_process_with_the_same_global_batch(setup):
    """Same global batch, augmentations and quarter turns. With batch norm frozen and no dropout (per-process
    batch statistics on a CPU cannot be synchronised) and no anchor sampling (each process samples its own
    pixels), only the batch-pooled Dice differs: the weights agree closely."""
    d, root = setup
    (one,) = run(d, root, d / "one", 1, contrast="none", mode="exact")
    two, _ = run(d, root, d / "two-x", 2, contrast="none", mode="exact", port=29542)
    init = torch.load(d / "one" / "init.pt", weights_only=True)
    assert all(
        torch.equal(init[k], v) for k, v in torch.load(d / "two-x" / "init.pt", weights_only=True).items()
    )
    keys = [k for k, v in one.items() if v.is_floating_point() and k.endswith("weight")]
    diff = sum((one[k] - two[k]).norm() ** 2 for k in keys).sqrt()
    update = sum((one[k] - init[k]).norm() ** 2 for k in keys).sqrt()
    assert update > 0 and diff / update < 0.05, (
        f"2 processes differ from 1 by {diff / update:.3%} of the update"
    )
    assert torch.equal(one["queue.count"], two["queue.count"])


def test_resume_under_ddp(setup, two):
    d, root = setup
    run(d, root, d / "part", 2, stop=2, port=29544)
    resumed = run(d, root, d / "part", 2, mode="resume", port=29545)[0]
    for k in two[0]:
        assert torch.equal(two[0][k], resumed[k]), f"{k} differs after resume under DDP"
