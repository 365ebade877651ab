"ucpcl.losses beyond the notebook: MONAI agreement over many random cases, dtypes, edge cases, bad input."

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ucpcl.core import Config
from ucpcl.losses import (
    LossWeights,
    consistency_loss,
    consistency_weight,
    dice_loss,
    seg_loss,
    supervised_loss,
    total_loss,
)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("squared_pred", [False, True])
def test_dice_matches_monai_batch_dice(seed, include_background, squared_pred):
    g = torch.Generator().manual_seed(seed)
    B, C = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
    H, W = (int(v) for v in torch.randint(3, 20, (2,), generator=g))
    lg = 3 * torch.randn(B, C, H, W, generator=g)
    y = torch.randint(0, C, (B, H, W), generator=g)
    y = torch.where(torch.rand(B, H, W, generator=g) < 0.3, -1, y)
    monai = DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        squared_pred=squared_pred,
        ignore_index=-1,
    )
    ours = dice_loss(lg, y, include_background=include_background, squared_pred=squared_pred)
    assert torch.allclose(ours, monai(lg, y[:, None]), atol=1e-6)


def test_dice_on_probabilities_equals_dice_on_logits_and_other_ignore_values():
    lg, y = torch.randn(2, 3, 7, 7), torch.randint(0, 3, (2, 7, 7))
    assert torch.allclose(dice_loss(lg, y), dice_loss(lg.softmax(1), y, softmax=False))
    y_ign = torch.where(torch.rand(2, 7, 7) < 0.3, -1, y)
    a = dice_loss(lg, y_ign)
    b = dice_loss(lg, torch.where(y_ign < 0, 255, y_ign).to(torch.uint8), ignore_index=255)
    assert torch.allclose(a, b)
    assert torch.allclose(dice_loss(lg, y.int()), dice_loss(lg, y))


def test_dice_and_seg_follow_dtype():
    lg, y = torch.randn(2, 4, 6, 6), torch.randint(-1, 4, (2, 6, 6))
    for dt in (torch.float64, torch.bfloat16):
        assert dice_loss(lg.to(dt), y).dtype == dt and seg_loss(lg.to(dt), y).dtype == dt
    assert torch.allclose(dice_loss(lg.double(), y).float(), dice_loss(lg, y), atol=1e-6)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (lambda p: -p, "is not probabilities"),
        (lambda p: p * 1.1, "is not probabilities"),
        (lambda p: torch.full_like(p, 0.5), "sums over C"),
    ],
)
def test_dice_rejects_non_probabilities(bad, msg):
    p, y = torch.randn(2, 4, 5, 5).softmax(1), torch.randint(0, 4, (2, 5, 5))
    with pytest.raises(ValueError, match=msg):
        dice_loss(bad(p), y, softmax=False)
    dice_loss(bad(p), y)  # the same tensor is accepted as logits


def test_bad_input_messages():
    lg, y = torch.randn(2, 4, 5, 5), torch.randint(0, 4, (2, 5, 5))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        dice_loss(lg, y, eps=-1)
    with pytest.raises(ValueError, match=r"num_classes=5 but the prediction has C=4"):
        dice_loss(lg, y, num_classes=5)
    with pytest.raises(ValueError, match=r"class ids \[4, 9\] outside the valid range 0..3"):
        seg_loss(lg, torch.where(y == 0, 4, torch.where(y == 1, 9, y)))
    with pytest.raises(ValueError, match="NaN or inf"):
        seg_loss(lg.index_fill(0, torch.tensor([1]), math.inf), y)
    with pytest.raises(ValueError, match="floating"):
        seg_loss(lg.long(), y)
    with pytest.raises(ValueError, match="integer class ids"):
        seg_loss(lg, y.bool())
    with pytest.raises(ValueError, match=r"must be \(B, H, W\)"):
        seg_loss(lg, y[:, None])
    with pytest.raises(ValueError, match="same shape"):
        supervised_loss(lg, lg[:, :3], y)
    with pytest.raises(ValueError, match="same"):
        consistency_loss(lg, lg[:1])


def test_seg_loss_ce_part_and_single_class():
    lg, y = torch.randn(3, 2, 6, 6), torch.randint(-1, 2, (3, 6, 6))
    ce = F.cross_entropy(lg, y, ignore_index=-1)
    assert torch.allclose(2 * seg_loss(lg, y) - dice_loss(lg, y), ce, atol=1e-6)
    with pytest.raises(ValueError, match="include_background=True"):
        seg_loss(lg[:, :1], y.clamp(max=0))
    assert torch.isfinite(seg_loss(lg[:, :1], y.clamp(max=0), include_background=True))


def test_supervised_loss_gradients_are_weighted_by_alpha():
    lc = torch.randn(2, 4, 6, 6, requires_grad=True)
    lt = lc.detach().clone().requires_grad_()
    y = torch.randint(0, 4, (2, 6, 6))
    supervised_loss(lc, lt, y, alpha=0.4).backward()
    assert torch.allclose(lt.grad, 0.4 * lc.grad, atol=1e-7)


def test_consistency_bounds_and_symmetry():
    g = torch.Generator().manual_seed(0)
    for C in (2, 4, 7):
        a, b = 5 * torch.randn(3, C, 4, 4, generator=g), 5 * torch.randn(3, C, 4, 4, generator=g)
        l = consistency_loss(a, b)
        assert 0 <= l <= 2 / C and torch.allclose(l, consistency_loss(b, a))
        assert consistency_loss(a, a + 3.0) < 1e-12  # softmax ignores a shift of all logits


def test_consistency_weight_staircase_and_bounds():
    prev = -1.0
    for i in range(0, 700):
        w = consistency_weight(i, 600, weight=0.1, step=100)
        assert w >= prev and 0 < w <= 0.1
        prev = w
    assert consistency_weight(650, 600, weight=0.1, step=100) == 0.1
    with pytest.raises(ValueError, match="weight must be >= 0"):
        consistency_weight(1, 10, weight=-0.1)
    with pytest.raises(ValueError, match="step must be"):
        consistency_weight(1, 10, step=2.5)


def test_total_loss_gradients_carry_the_weights():
    terms = [torch.tensor(v, requires_grad=True) for v in (0.7, 0.3, 2.0, 1.1)]
    total_loss(*terms, lambda_t=0.005, lambda_1=0.2, lambda_2=0.3).backward()
    assert [float(t.grad) for t in terms] == pytest.approx([1.0, 0.005, 0.2, 0.3])
    with pytest.raises(ValueError, match="lambda_1 must be a finite weight"):
        total_loss(1, 1, 1, 1, 0.0, lambda_1=math.nan)


def test_loss_weights_is_a_config_and_round_trips(tmp_path):
    w = LossWeights(consistency=0.1, include_background=True)
    assert isinstance(w, Config) and LossWeights.load(w.save(tmp_path / "w.json")) == w
    with pytest.raises(Exception):
        w.alpha = 1.0  # frozen
    with pytest.raises(ValueError, match="lambda_2 must be a finite number"):
        LossWeights(lambda_2=math.inf)
    with pytest.raises(ValueError, match="consistency must be a finite number"):
        LossWeights(consistency="0.01")


def test_a_class_absent_from_the_batch_costs_almost_one():
    lg, y = torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, 0] = 1  # class 1: 4 of 16 pixels; class 2 absent; uniform prediction p = 1/3
    d1 = 1 - (2 * 4 / 3) / (16 / 3 + 4)
    d2 = 1 - 1e-5 / (16 / 3 + 1e-5)
    assert dice_loss(lg, y).item() == pytest.approx((d1 + d2) / 2, abs=1e-6)
