"ucpcl.rotation beyond the notebook: many shapes and dtypes against a plain loop, edge cases, bad input."

import math

import pytest
import torch
from torch import nn

from ucpcl.rotation import RotationHead, random_rotation, rot90_batch, rotation_loss, rotation_loss_all


def rot90_loop(x, k):
    return torch.stack([torch.rot90(xb, int(kb), dims=(-2, -1)) for xb, kb in zip(x, k)])


@pytest.mark.parametrize("shape", [(5, 6, 6), (5, 3, 6, 6), (5, 2, 3, 7, 7), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool])
def test_rot90_batch_matches_a_loop(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) * 10).to(dtype)
    k = torch.randint(-8, 8, (shape[0],), generator=g)
    out = rot90_batch(x, k)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, rot90_loop(x, k))


@pytest.mark.parametrize("k", [[0, 2, 2, 0], [1, 3, 3, 1], [-1, 5, 1, 3]])
def test_non_square_with_one_parity_matches_a_loop(k):
    x, k = torch.randn(4, 2, 5, 9), torch.tensor(k)
    assert torch.equal(rot90_batch(x, k), rot90_loop(x, k))


def test_empty_batch_and_int32_k():
    for hw in [(4, 4), (3, 5)]:
        x = torch.zeros(0, 2, *hw)
        assert rot90_batch(x, torch.zeros(0, dtype=torch.long)).shape == x.shape
    x = torch.randn(3, 4, 4)
    assert torch.equal(rot90_batch(x, torch.tensor([1, 2, 3], dtype=torch.int32)), rot90_loop(x, [1, 2, 3]))


def test_gradient_flows_back_through_the_rotation():
    x = torch.randn(4, 1, 5, 5, requires_grad=True)
    w = torch.randn(4, 1, 5, 5)
    (rot90_batch(x, torch.tensor([0, 1, 2, 3])) * w).sum().backward()
    assert torch.equal(x.grad, rot90_batch(w, torch.tensor([0, 3, 2, 1])))  # the gradient is turned back


@pytest.mark.parametrize(
    "k, msg",
    [([0.5, 1.0], "integer tensor"), ([True, False], "integer tensor"), ([0, 1, 2], "shape (B,) = (2,)")],
)
def test_rot90_batch_bad_k(k, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        rot90_batch(torch.zeros(2, 3, 3), torch.tensor(k))
    with pytest.raises(ValueError, match="integer tensor"):
        rot90_batch(torch.zeros(2, 3, 3), [0, 1])


def test_random_rotation_is_seeded_and_uses_the_global_generator_otherwise():
    x, y = torch.randn(16, 3, 8, 8), torch.randint(-1, 4, (16, 8, 8))
    a = random_rotation(x, y, generator=torch.Generator().manual_seed(7))
    b = random_rotation(x, y, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    torch.manual_seed(3)
    c = random_rotation(x)[2]
    torch.manual_seed(3)
    d = random_rotation(x)[2]
    assert torch.equal(c, d) and c.device == x.device
    xr, yr, k = a
    assert torch.equal(yr, rot90_loop(y, k)) and torch.equal(xr, rot90_loop(x, k))
    assert set(yr.unique().tolist()) == set(y.unique().tolist())


def test_rotation_head_parameters_and_dropout():
    head = RotationHead(64, num_rotations=4, dropout=0.5)
    assert sum(p.numel() for p in head.parameters()) == 64 * 4 + 4
    f = torch.randn(8, 64, 3, 3)
    head.train()
    torch.manual_seed(0)
    a = head(f)
    b = head(f)
    assert not torch.allclose(a, b)  # dropout is active in training
    head.eval()
    assert torch.equal(head(f), head(f))
    with pytest.raises(ValueError, match="num_rotations >= 2"):
        RotationHead(8, num_rotations=1)
    with pytest.raises(ValueError, match="expects features"):
        head(torch.randn(8, 64))


def test_rotation_loss_bad_input():
    z = torch.randn(4, 4)
    with pytest.raises(ValueError, match="logits must be"):
        rotation_loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="B >= 1"):
        rotation_loss(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"rotation ids \[-1\] outside 0..3"):
        rotation_loss(z, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match="integer rotation ids"):
        rotation_loss(z, torch.tensor([True, False, True, True]))


def test_a_rotation_invariant_encoder_cannot_beat_chance():
    "Eq. 11 is what l_e needs: when the pooled feature ignores the rotation, l_e >= ln 4 whatever the head."
    enc = lambda x: (
        x.mean((1, 2, 3), keepdim=True).expand(-1, 8, 2, 2) * torch.arange(1.0, 9).view(1, 8, 1, 1)
    )
    for seed in range(3):
        torch.manual_seed(seed)
        head = RotationHead(8).eval()
        assert rotation_loss_all(enc, head, torch.randn(5, 1, 6, 6)) >= math.log(4) - 1e-6


def test_rotation_loss_all_batchnorm_caveat_and_dtype():
    "In training mode BatchNorm sees one batch of 4B images (batched) or four of B: the forms then differ."
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    head = RotationHead(4, dropout=0.0)
    x = torch.randn(3, 1, 6, 6) + torch.linspace(
        0, 3, 6
    )  # a horizontal ramp, so rotations differ in statistics
    assert not torch.allclose(rotation_loss_all(enc, head, x), rotation_loss_all(enc, head, x, batched=False))
    enc.eval()
    assert torch.allclose(
        rotation_loss_all(enc, head, x), rotation_loss_all(enc, head, x, batched=False), atol=1e-6
    )
    enc64, head64 = enc.double(), head.double()
    assert rotation_loss_all(enc64, head64, x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="images must be"):
        rotation_loss_all(enc, head, x[0])
