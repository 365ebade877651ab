"ucpcl.uncertainty beyond the notebook: bad inputs, dtypes and devices, the schedule as a configuration."

import math

import pytest
import torch

from ucpcl.uncertainty import (
    CONTRAST_MODES,
    ThresholdSchedule,
    certain_pseudo_label,
    contrast_labels,
    entropy_map,
    linear_rampup,
    sigmoid_rampup,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _probs(*shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(*shape, generator=g), 1).to(device=device, dtype=dtype)


@pytest.mark.parametrize(
    "bad, msg",
    [
        (torch.randn(2, 4, 3, 5), "not probabilities"),  # logits
        (torch.full((2, 4, 3, 5), 0.5), "not probabilities"),  # sums to 2
        (torch.full((1, 2, 2, 2), float("nan")), "not probabilities"),  # NaN
        (torch.rand(4, 3, 5), "(B, C, H, W)"),  # no batch axis
        (torch.ones(1, 1, 2, 2, dtype=torch.long), "floating"),  # integer
    ],
)
def test_entropy_map_rejects_non_probabilities(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        entropy_map(bad)


def test_entropy_map_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        entropy_map(_probs(1, 3, 2, 2), eps=-1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_entropy_and_pseudo_labels_follow_dtype_and_device(device, dtype):
    p, q = (
        _probs(2, 4, 6, 7, dtype=dtype, device=device),
        _probs(2, 4, 6, 7, dtype=dtype, device=device, seed=1),
    )
    u = entropy_map(p)
    assert u.dtype == dtype and u.device.type == device and u.shape == (2, 6, 7)
    ref = entropy_map(p.double().cpu())
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 3e-2
    assert torch.allclose(u.double().cpu(), ref, atol=tol)
    y = certain_pseudo_label(p, q, math.log(2))
    assert y.dtype == torch.long and y.device.type == device and y.shape == (2, 6, 7)


def test_entropy_is_bounded_by_ln_c():
    for c in (2, 3, 4, 8):
        u = entropy_map(_probs(3, c, 5, 5, seed=c))
        assert (u >= -1e-5).all() and (u <= math.log(c) + 1e-5).all()


def test_pseudo_label_keeps_exactly_the_pixels_below_h():
    p, q = _probs(2, 4, 9, 9), _probs(2, 4, 9, 9, seed=3)
    u, arg = entropy_map((p + q) / 2), ((p + q) / 2).argmax(1)
    for h in (0.1, 0.5, math.log(2), 1.2):
        y = certain_pseudo_label(p, q, h)
        assert torch.equal(y, torch.where(u < h, arg, torch.full_like(arg, -1)))


def test_pseudo_label_rejects_bad_threshold_and_shapes():
    p = _probs(1, 4, 3, 3)
    with pytest.raises(ValueError, match="threshold H must be >= 0"):
        certain_pseudo_label(p, p, -0.1)
    with pytest.raises(ValueError, match="threshold H must be >= 0"):
        certain_pseudo_label(p, p, float("nan"))
    with pytest.raises(ValueError, match="same"):
        certain_pseudo_label(p, _probs(1, 3, 3, 3), 0.5)


def test_contrast_labels_keeps_ground_truth_and_rejects_bad_inputs():
    p, q = _probs(4, 3, 5, 5), _probs(4, 3, 5, 5, seed=2)
    labels = torch.randint(-1, 3, (4, 5, 5))
    assert CONTRAST_MODES == ("none", "labeled", "pseudo", "uncertainty")  # the rows of Table 2
    for mode in CONTRAST_MODES[1:]:
        y = contrast_labels(p, q, labels, 2, 0.5, mode)
        assert torch.equal(y[:2], labels[:2]) and y.dtype == torch.long and y.shape == (4, 5, 5)
    none = contrast_labels(p, q, labels, 2, 0.5, "none")  # no pixel contrast: no pixel gives an anchor
    assert (none == -1).all() and none.dtype == torch.long and none.shape == (4, 5, 5)
    assert torch.equal(contrast_labels(p, q, labels, 4, 0.5, "labeled"), labels)
    assert (contrast_labels(p, q, labels, 0, 0.5, "labeled") == -1).all()
    assert torch.equal(contrast_labels(p, q, labels, 0, 0.5, "pseudo"), ((p + q) / 2).argmax(1))
    with pytest.raises(ValueError, match="labeled_bs must be in 0..4"):
        contrast_labels(p, q, labels, -1, 0.5)
    with pytest.raises(ValueError, match="integer class ids"):
        contrast_labels(p, q, labels.float(), 2, 0.5)
    with pytest.raises(ValueError, match="outside -1..2"):
        contrast_labels(p, q, labels - 1, 2, 0.5)
    with pytest.raises(ValueError, match="not probabilities"):
        contrast_labels(p.log(), q.log(), labels, 2, 0.5, "pseudo")


def test_rampups():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5)) and sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(5, 0) == 1.0 and linear_rampup(5, 0) == 1.0
    assert linear_rampup(-3, 10) == 0.0 and linear_rampup(3, 10) == pytest.approx(0.3)
    assert isinstance(sigmoid_rampup(3, 10), float)
    with pytest.raises(ValueError, match="rampup_length must be >= 0"):
        linear_rampup(1, -2)


def test_threshold_schedule_is_a_config(tmp_path):
    h = ThresholdSchedule(value=math.log(4), start=0.5)
    assert ThresholdSchedule.load(h.save(tmp_path / "h.json")) == h
    assert h(0, 100) == pytest.approx((0.5 + 0.5 * math.exp(-5)) * math.log(4)) and h(
        100, 100
    ) == pytest.approx(math.log(4))
    assert h(250, 100) == pytest.approx(math.log(4))  # past the end it stays at value
    with pytest.raises(ValueError, match="valid modes are \\['schedule', 'fixed'\\]"):
        ThresholdSchedule.from_dict({"mode": "cosine"})
    with pytest.raises(ValueError, match="start must be in \\[0, 1\\]"):
        ThresholdSchedule(start=1.5)
    with pytest.raises(ValueError, match="unknown key"):
        ThresholdSchedule.from_dict({"threshold": 0.5})
    with pytest.raises(Exception):
        h.value = 1.0  # frozen
