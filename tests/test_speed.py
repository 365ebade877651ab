"""The speed-ups of ucpcl.models compute the same network: the Transformer decoder against a plain version
of it (pixel_shuffle expansion, torchvision's attention, the head as a convolution on the full grid), the
channels_last network against the same weights in the default layout; a trainer on the CPU reuses freed
memory; and bench/versus_reference.py runs."""

import os, platform, subprocess, sys

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention

from nbrun import ROOT
from ucpcl.models import ENCODER_CHANNELS, TransformerDecoder, WindowAttention, build_model, shuffle_to_blocks


def _plain_expand(px, x: torch.Tensor, w_shuffle: torch.Tensor) -> torch.Tensor:
    "Patch expanding with the expand weight in pixel_shuffle order (channel, row, col), as ucpcl had it."
    y = F.pixel_shuffle(F.linear(x, w_shuffle).permute(0, 3, 1, 2), px.scale)
    return px.norm(y.permute(0, 2, 3, 1))


def _plain_decoder(td: TransformerDecoder, feats, old: dict) -> torch.Tensor:
    "The decoder computed the plain way, with expand weights `old` in pixel_shuffle order."
    tokens = [emb(f) for emb, f in zip(td.embed, feats[1:])]
    x = tokens[3]
    for i in (2, 1, 0):
        x = _plain_expand(td.expand[i], x, old[f"expand.{i}.expand.weight"])
        x = td.fuse[i](torch.cat([x, tokens[i]], -1))
        for blk in td.blocks[i]:  # torchvision's own attention with the same weights
            plain = ShiftedWindowAttention(
                x.shape[-1], blk.attn.window_size, blk.attn.shift_size, blk.attn.num_heads
            )
            plain.load_state_dict(blk.attn.state_dict())
            y = x + blk.stochastic_depth(plain(blk.norm1(x)))
            x = y + blk.stochastic_depth(blk.mlp(blk.norm2(y)))
    x = _plain_expand(td.up4, td.norm(x), old["up4.expand.weight"])
    return td.head(x.permute(0, 3, 1, 2))  # the 1x1 convolution on the full-resolution grid


def test_transformer_decoder_equals_the_plain_decoder_up_to_the_expand_rows_order():
    torch.manual_seed(0)
    ch = ENCODER_CHANNELS["resnet18"]
    td = TransformerDecoder(ch, 4, img_size=96, embed_dims=(48, 96, 192, 384), window_size=3).eval()
    feats = [torch.randn(2, c, 96 // s, 96 // s) for c, s in zip(ch, (2, 4, 8, 16, 32))]
    # the old layout's weights: the rows of each expand weight permuted to (channel, row, col)
    old = {}
    for name, px in [*((f"expand.{i}", td.expand[i]) for i in range(3)), ("up4", td.up4)]:
        s, w = px.scale, px.expand.weight.detach()
        old[f"{name}.expand.weight"] = w.view(s, s, px.out_dim, -1).permute(2, 0, 1, 3).reshape(w.shape)
        assert torch.equal(shuffle_to_blocks(old[f"{name}.expand.weight"], s), w)  # and the map back
    with torch.no_grad():
        torch.testing.assert_close(td(feats), _plain_decoder(td, feats, old), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid", [(28, 28), (14, 14), (10, 12)])
def test_window_attention_keeps_one_mask_per_grid(grid):
    attn = WindowAttention(24, [7, 7], [3, 3], 3)
    x = torch.randn(2, *grid, 24)
    a = attn(x)
    assert len(attn._masks) == 1
    torch.testing.assert_close(attn(x), a)  # the kept mask gives the same result
    assert len(attn._masks) == 1
    attn(torch.randn(1, 21, 21, 24))  # another grid: another mask
    assert len(attn._masks) == 2


def test_paper_network_in_channels_last_equals_the_default_layout():
    torch.manual_seed(0)
    a = build_model("paper", img_size=64).eval()
    b = build_model("paper", img_size=64).to(memory_format=torch.contiguous_format).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        for u, v in zip(a(x), b(x)):
            assert u.is_contiguous()
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def _versus(*args: str, tmp) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "bench" / "versus_reference.py"), *args]
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_versus_reference_runs_ucpcl_alone_and_says_what_the_comparison_needs(tmp_path):
    r = _versus(
        "--batch", "1", "--size", "64", "--rounds", "1", "--steps", "1", "--warmup", "0", tmp=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ucpcl | 41,819,142 | 1 |" in r.stdout and "reference |" not in r.stdout
    assert "ucpcl only: the comparison with the reference implementation needs" in r.stderr
    bad = _versus("--reference", str(tmp_path), tmp=tmp_path)
    assert bad.returncode != 0 and "no codes/models/unet_tf.py there" in bad.stderr


def test_versus_reference_sorts_operators_by_kind():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from versus_reference import kind
    finally:
        sys.path.remove(str(ROOT / "bench"))
    assert [kind(n) for n in ("aten::convolution_backward", "aten::mkldnn_convolution")] == ["conv_s"] * 2
    assert [kind(n) for n in ("aten::mm", "aten::addmm", "aten::bmm")] == ["matmul_s"] * 3
    assert kind("aten::native_batch_norm_backward") == "batchnorm_s"
    assert [kind(n) for n in ("aten::mmm", "aten::copy_", "aten::matmul")] == ["other_s"] * 3


# in a child: a CPU trainer, then 20 rounds of a 64 MiB tensor made and freed; the last 10's page faults
_TRAINER_FAULTS = """
import resource, sys, torch
from ucpcl.phantoms import write_phantom
from ucpcl.train import TrainConfig, Trainer
root = write_phantom("cardiac", sys.argv[1], seed=0, num_patients=(2, 1, 1))
if sys.argv[2] == "trainer":
    out = sys.argv[1] + "/run"
    Trainer(TrainConfig(data_root=str(root), preset="small", img_size=32, labeled=1, device="cpu", out=out))
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 * 2**20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="reuse_freed_memory changes glibc's malloc only"
)
def test_a_cpu_trainer_makes_freed_memory_reusable(tmp_path):
    "After a Trainer on the CPU is built, a freed 64 MiB tensor's pages serve the next one (no page faults)."
    faults = {}
    for mode in ("plain", "trainer"):
        cmd = [sys.executable, "-c", _TRAINER_FAULTS, str(tmp_path / mode), mode]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        faults[mode] = int(r.stdout.split()[-1])
    assert faults["plain"] >= 10 * 16384 * 0.9, faults  # the system's defaults: each round faults 16384 pages
    assert faults["trainer"] < 16384 // 10, faults


@pytest.mark.slow
def test_versus_reference_reuse_memory_option(tmp_path):
    r = _versus(
        *"--batch 1 --size 64 --rounds 1 --steps 1 --warmup 0 --reuse-memory both --profile".split(),
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "both reuse freed memory" in r.stdout and "| ucpcl | 41,819,142 | 1 |" in r.stdout
    # --profile: each kind of operator found, and their own times summed once (the operators' totals, which
    # nest, add up to about four steps here): the profiled step is near the timed one
    wall = float(next(x for x in r.stdout.splitlines() if x.startswith("| ucpcl |")).split(" | ")[3])
    profiled = r.stdout.split("| convolutions (s) |")[1].splitlines()
    row = next(x for x in profiled if x.startswith("| ucpcl |"))
    conv, mm, bn, other, whole = (float(c) for c in row.strip("| ").split(" | ")[1:])
    assert min(conv, mm, bn, other) > 0 and wall / 4 < whole < 2.5 * wall, (row, wall)
    assert "ucpcl: convolutions, matrix products and batch norm" in r.stdout
    bad = _versus("--reuse-memory", "always", tmp=tmp_path)
    assert bad.returncode != 0 and "invalid choice: 'always'" in bad.stderr
