"""ucpcl.contrast beyond the notebook: queue edge cases and checkpoints, the loss against a literal formula
and gradcheck."""

import io, math

import pytest
import torch
import torch.nn.functional as F

from ucpcl.contrast import MemoryQueue, pixel_info_nce, pixel_info_nce_loop


def test_push_keeps_the_newest_when_more_than_memory_size_arrive():
    q = MemoryQueue(2, 3, memory_size=4)
    x = torch.eye(3).repeat(3, 1) + torch.arange(9.0)[:, None]  # nine distinct directions
    q.push(x, torch.zeros(9, dtype=torch.long))
    vecs, cls = q.entries()
    assert torch.allclose(vecs, F.normalize(x[5:], dim=1)) and (cls == 0).all()
    assert q.count.tolist() == [4, 0] and q.ptr.tolist() == [1, 0] and len(q) == 4


def test_push_of_nothing_or_only_ignored_changes_nothing():
    q = MemoryQueue(2, 3, memory_size=4).push(torch.randn(3, 3), torch.tensor([0, 1, 1]))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q.push(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)).push(
        torch.randn(2, 3), torch.tensor([-1, -1])
    )
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_queue_checkpoint_round_trip_inside_a_model():
    model = torch.nn.Module()
    model.queue = MemoryQueue(4, 8, memory_size=6)
    model.queue.push(torch.randn(30, 8), torch.randint(0, 4, (30,)))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = torch.nn.Module()
    other.queue = MemoryQueue(4, 8, memory_size=6)
    other.load_state_dict(torch.load(buf))
    assert set(model.state_dict()) == {"queue.vectors", "queue.ptr", "queue.count"}
    for a, b in zip(model.queue.entries(), other.queue.entries()):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError):
        MemoryQueue(4, 8, memory_size=7).load_state_dict(model.queue.state_dict())


def test_queue_dtype_and_bad_construction():
    q = MemoryQueue(2, 4, memory_size=3).double().push(torch.randn(2, 4), torch.tensor([0, 1]))
    assert q.vectors.dtype == torch.float64 and q.ptr.dtype == torch.long
    for kw, msg in [
        ({"num_classes": 0, "dim": 4}, "num_classes"),
        ({"num_classes": 2, "dim": 4, "memory_size": 0}, "memory_size"),
        ({"num_classes": 2, "dim": 1.5}, "dim"),
    ]:
        with pytest.raises(ValueError, match=f"{msg} must be a positive int"):
            MemoryQueue(**kw)
    assert "memory_size=3" in repr(q)


def _literal(anchors, labels, keys, key_labels, tau):
    "Eq. 8-9 with Python floats, pair by pair."
    total, n = 0.0, 0
    for v, c in zip(anchors.tolist(), labels.tolist()):
        cos = lambda k: (
            sum(a * b for a, b in zip(v, k)) / math.sqrt(sum(a * a for a in v) * sum(b * b for b in k))
        )
        s = [(cos(k), kc) for k, kc in zip(keys.tolist(), key_labels.tolist()) if kc >= 0]
        pos, neg = [x / tau for x, kc in s if kc == c], [x / tau for x, kc in s if kc != c]
        if not pos:
            continue
        total += -sum(
            math.log(math.exp(p) / (math.exp(p) + sum(math.exp(m) for m in neg))) for p in pos
        ) / len(pos)
        n += 1
    return total / max(n, 1)


@pytest.mark.parametrize("seed", range(6))
def test_loss_matches_the_literal_formula(seed):
    g = torch.Generator().manual_seed(seed)
    keys, key_labels = torch.randn(12, 5, generator=g), torch.randint(-1, 3, (12,), generator=g)
    anchors, labels = torch.randn(7, 5, generator=g), torch.randint(0, 4, (7,), generator=g)
    tau = [0.07, 0.1, 0.5, 1.0, 2.0, 0.2][seed]
    ref = _literal(anchors, labels, keys, key_labels, tau)
    assert pixel_info_nce(anchors.double(), labels, (keys.double(), key_labels), tau).item() == pytest.approx(
        ref, rel=1e-9, abs=1e-12
    )
    assert pixel_info_nce_loop(
        anchors.double(), labels, (keys.double(), key_labels), tau
    ).item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_gradcheck():
    q = MemoryQueue(3, 4, memory_size=5).double().push(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    a, y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True), torch.randint(0, 3, (6,))
    assert torch.autograd.gradcheck(lambda a: pixel_info_nce(a, y, q, tau=0.3), (a,))


def test_check_false_skips_the_class_check_but_gives_the_same_loss():
    q = MemoryQueue(3, 4, memory_size=5).push(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    a, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    assert torch.equal(pixel_info_nce(a, y, q, check=False), pixel_info_nce(a, y, q))
    q.push(a, y, check=False)


def test_queue_on_another_device_is_an_error():
    q = MemoryQueue(3, 4).to("meta")
    with pytest.raises(ValueError, match=r"queue.to\(device\)"):
        pixel_info_nce(torch.randn(2, 4), torch.tensor([0, 1]), q)


@pytest.mark.parametrize(
    "call, msg",
    [
        (lambda a, y, q: pixel_info_nce(a, y, q, tau=-1.0), "tau must be > 0"),
        (lambda a, y, q: pixel_info_nce(a[None], y, q), r"anchors must be \(N, D\)"),
        (lambda a, y, q: pixel_info_nce(a, y.float(), q), "integer class ids"),
        (lambda a, y, q: pixel_info_nce(a, y - 1, q), "outside 0..2"),
        (
            lambda a, y, q: pixel_info_nce(a, y, (torch.randn(5, 4), torch.zeros(4, dtype=torch.long))),
            "MemoryQueue or a pair",
        ),
        (
            lambda a, y, q: pixel_info_nce(a, y, (torch.randn(5, 3), torch.zeros(5, dtype=torch.long))),
            "queue's dim=3",
        ),
        (
            lambda a, y, q: pixel_info_nce(a, y - 1, (torch.randn(5, 4), torch.zeros(5, dtype=torch.long))),
            "outside 0..",
        ),
        (lambda a, y, q: pixel_info_nce_loop(a, y, q, tau=0.0), "tau must be > 0"),
        (lambda a, y, q: q.push(a[:, :3], y), "dim=4"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, msg):
    q = MemoryQueue(3, 4, memory_size=5).push(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    a, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=msg):
        call(a, y, q)
