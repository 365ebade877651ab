"ucpcl.anchors beyond the notebook: the sampling rule on many random cases, edge cases, dtypes and devices."

import pytest
import torch

from ucpcl.anchors import downsample_labels, sample_anchor_index, sample_anchors, sample_anchors_loop

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _case(seed, B=3, h=6, w=7, C=4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, C, (B, h, w), generator=g)
    labels[labels == C - 1] = torch.where(
        torch.rand((labels == C - 1).sum(), generator=g) < 0.8, -1, C - 1
    )  # a rare class
    return torch.randn(B, 5, h, w, generator=g), labels


@pytest.mark.parametrize("seed", range(30))
def test_the_sampling_rule(seed):
    emb, labels = _case(seed)
    K, C = 1 + seed % 9, 4
    idx = sample_anchor_index(labels, K, C, torch.Generator().manual_seed(seed))
    flat = labels.reshape(-1)
    avail = torch.bincount(flat[flat >= 0], minlength=C)
    drawn = torch.bincount(flat[idx], minlength=C)
    assert len(idx) == min(K * C, int(avail.sum()))  # M = min(K C, valid pixels)
    assert (flat[idx] >= 0).all() and len(idx.unique()) == len(idx)  # never ignored, never twice
    assert (drawn >= torch.clamp(avail, max=K)).all()  # every class gets its quota
    assert (drawn <= avail).all()
    a1, l1 = sample_anchors(emb, labels, K, C, torch.Generator().manual_seed(seed))
    a2, l2 = sample_anchors_loop(emb, labels, K, C, torch.Generator().manual_seed(seed))
    assert torch.equal(a1, a2) and torch.equal(l1, l2)


def test_shortfall_goes_to_the_other_classes_at_random():
    labels = torch.tensor([[[0] * 6 + [1] * 6 + [2]]])  # class 2 has one pixel, quota 3: two anchors short
    g = torch.Generator().manual_seed(0)
    counts = torch.stack(
        [
            torch.bincount(labels.reshape(-1)[sample_anchor_index(labels, 3, 3, g)], minlength=3)
            for _ in range(400)
        ]
    )
    assert (counts.sum(1) == 9).all() and (counts[:, 2] == 1).all() and (counts[:, :2] >= 3).all()
    # the 2 extra anchors are 2 of the 6 remaining pixels (3 of class 0, 3 of class 1), uniformly:
    # both from class 0 with probability 3/6 * 2/5 = 0.2, both from class 1 likewise, one of each 0.6
    for k, p in [(5, 0.2), (4, 0.6), (3, 0.2)]:
        assert abs((counts[:, 0] == k).float().mean() - p) < 0.07


def test_empty_inputs():
    emb = torch.randn(2, 8, 4, 4, requires_grad=True)
    a, l = sample_anchors(emb, torch.full((2, 4, 4), -1), 5, 3)
    assert a.shape == (0, 8) and l.shape == (0,)
    a.sum().backward()  # an empty draw is still part of the graph
    a, l = sample_anchors(torch.randn(0, 8, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long), 5, 3)
    assert a.shape == (0, 8) and l.shape == (0,)
    a, l = sample_anchors_loop(emb, torch.full((2, 4, 4), -1), 5, 3)
    assert a.shape == (0, 8) and l.shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dtype_and_device_follow_the_input(device, dtype):
    emb, labels = _case(0)
    a, l = sample_anchors(emb.to(device, dtype), labels.to(device).int(), 3, 4)
    assert a.dtype == dtype and a.device.type == device and l.dtype == torch.long and l.device.type == device


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda e, y: sample_anchors(e, y[:, :3], 2, 4), r"call downsample_labels\(labels, \(6, 7\)\) first"),
        (lambda e, y: sample_anchors(e[0], y, 2, 4), r"\(B, D, h, w\)"),
        (lambda e, y: sample_anchors(e, y.float(), 2, 4), "integer class ids"),
        (lambda e, y: sample_anchors(e, y, 2, 3), r"outside -1..2"),
        (lambda e, y: sample_anchors(e, y - 1, 2, 4), r"outside -1..3"),
        (lambda e, y: sample_anchors(e, y, 2.5, 4), "per_class must be a positive int"),
        (lambda e, y: sample_anchors(e, y, 2, 0), "num_classes must be a positive int"),
        (lambda e, y: sample_anchors_loop(e, y, 2, 3), r"outside -1..2"),
        (lambda e, y: downsample_labels(y, (0, 3)), "h, w >= 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, msg):
    emb, labels = _case(1)
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match=msg):
        call(emb, labels)


def test_downsample_labels_is_nearest_and_keeps_ignored():
    labels = torch.arange(-1, 63).reshape(1, 8, 8) % 5 - 1
    small = downsample_labels(labels, (4, 2))
    assert torch.equal(small, labels[:, ::2, ::4])
    assert torch.equal(downsample_labels(labels, 8), labels)
