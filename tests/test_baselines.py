"""The baselines of Table 1: each trains through the trainer, learns a fixed batch, and survives a checkpoint
round trip; the mean-teacher helper, UA-MT's passes and mask, and CPS's pseudo labels do what they claim."""

import copy, csv, math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ucpcl.baselines import UAMT, batch_statistics, ema_update, input_noise, make_teacher, unet_logits
from ucpcl.core import seed_everything
from ucpcl.cotraining import cross_pseudo_labels, feature_dropout, feature_noise, salient_dropout
from ucpcl.models import get_preset
from ucpcl.phantoms import write_phantom
from ucpcl.train import TrainConfig, Trainer, get_method, train

BASELINES = ["mt", "uamt", "em", "dct", "cct", "cps"]
TINY = dict(
    preset="small",
    img_size=32,
    batch_size=4,
    labeled_bs=2,
    eval_every=2,
    save_every=2,
    log_every=1,
    labeled=2,
    device="cpu",
)
MODEL = get_preset("small", img_size=32).replace(in_channels=1, num_classes=4)


@pytest.fixture(scope="module")
def phantom(module_tmp):
    return write_phantom("cardiac", module_tmp / "data" / "cardiac", seed=0, num_patients=(4, 2, 2))


@pytest.fixture(scope="module")
def batch(phantom):
    "One fixed two-stream batch: two labeled and two unlabeled slices at 32 pixels."
    t = Trainer(TrainConfig(data_root=str(phantom), method="mt", out="unused", **TINY))
    return next(iter(t.loader(0)))


def cfg(phantom, out, **kw):
    return TrainConfig(data_root=str(phantom), out=str(out), **{**TINY, "iterations": 2, **kw})


@pytest.mark.parametrize("name", BASELINES)
def test_trains_checkpoints_and_restores(phantom, tmp_path, name):
    "A few iterations through the trainer; the checkpoint gives back the same state and the same predictions."
    m = train(cfg(phantom, tmp_path, method=name), progress=False)
    assert set(m["test"]) == {"best", "last"} and 0 <= m["test"]["best"]["dice"] <= 1
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    assert all(
        math.isfinite(float(r["loss"])) and float(r["l_con"]) >= 0 and float(r["lambda_t"]) >= 0 for r in rows
    )
    a = Trainer.from_run(tmp_path, "last", device="cpu")
    b = Trainer.from_run(tmp_path, "last", device="cpu")
    ck = torch.load(tmp_path / "last.pt", weights_only=False)["method"]
    sa = a.method.state_dict()
    assert sa.keys() == ck.keys() and all(torch.equal(sa[k], ck[k]) for k in ck)
    if name in ("mt", "uamt"):
        assert any(k.startswith("teacher.") for k in ck)
    if name in ("dct", "cps"):
        assert any(k.startswith("model2.") for k in ck)
    if name == "cct":
        assert any(k.startswith("aux.2.") for k in ck)
    x = torch.randn(2, 1, 32, 32)
    a.method.eval()
    b.method.eval()
    with torch.no_grad():
        assert torch.equal(a.method.predict_logits(x), b.method.predict_logits(x))


@pytest.mark.parametrize("name", BASELINES)
def test_the_supervised_term_follows_the_runs_dice_form(batch, name):
    "Every baseline computes Eq. 4 with `dice_form`, as the full method does: same weights, another l_sup."

    def l_sup(form):
        seed_everything(0)
        method = get_method(name)(TrainConfig(method=name, dice_form=form, **TINY), MODEL)
        seed_everything(1)  # the same noise, dropout and turns in both steps
        return method.training_step(batch, 0)["l_sup"].item()

    linear, reference = l_sup("linear"), l_sup("reference")
    assert math.isfinite(reference) and abs(linear - reference) > 1e-4, (linear, reference)


@pytest.mark.parametrize("name", BASELINES)
def test_loss_goes_down_on_a_fixed_batch(batch, name):
    seed_everything(0)
    c = TrainConfig(method=name, **{**TINY, "iterations": 100})
    method = get_method(name)(c, MODEL)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    losses = []
    for it in range(10):
        terms = method.training_step(batch, 90 + it)  # late in the run: the unsupervised term has its weight
        assert terms["lambda_t"] > 0
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        method.after_step(it)
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    if name in ("mt", "uamt"):
        assert not any(p.requires_grad for p in method.teacher.parameters())
        assert len(params) == len([p for n, p in method.named_parameters() if not n.startswith("teacher.")])


def test_prediction_comes_from_the_student_or_network_1():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32)
    for name, other in (("mt", "teacher"), ("cps", "model2"), ("dct", "model2"), ("cct", "aux")):
        m = get_method(name)(TrainConfig(**TINY), MODEL).eval()
        with torch.no_grad():
            before = m.predict_logits(x)
            for p in getattr(m, other).parameters():
                p.add_(1.0)
            assert torch.equal(m.predict_logits(x), before), name  # the other network does not predict
            assert torch.equal(before, unet_logits(m.model, x))


def conv_bn():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)
    )


def test_ema_update_decay_0_copies_decay_1_keeps_and_tracks_batchnorm():
    torch.manual_seed(0)
    student = conv_bn()
    teacher = make_teacher(student)
    student(torch.randn(8, 1, 6, 6) * 2 + 1)  # training mode: the student's running statistics move
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.5)
    old = copy.deepcopy(teacher.state_dict())
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(old[k], v) for k, v in teacher.state_dict().items())
    ema_update(teacher, student, 0.5)
    for k, v in teacher.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (old[k] + student.state_dict()[k]) / 2)
    assert torch.equal(teacher[1].num_batches_tracked, student[1].num_batches_tracked)
    assert not torch.equal(teacher[1].running_var, old["1.running_var"])
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in teacher.state_dict().items())
    # the warm-up: alpha = min(decay, 1 - 1/(i + 1))
    assert (
        ema_update(teacher, student, 0.99, iteration=0) == 0.0
        and ema_update(teacher, student, 0.99, iteration=3) == 0.75
    )
    assert ema_update(teacher, student, 0.99, iteration=10_000) == 0.99
    with pytest.raises(ValueError, match="decay must be in"):
        ema_update(teacher, student, -0.1)
    with pytest.raises(ValueError, match="differ in structure"):
        ema_update(nn.Conv2d(1, 3, 3), student, 0.5)


def test_teacher_runs_on_batch_statistics_without_moving_its_own():
    torch.manual_seed(0)
    teacher = make_teacher(conv_bn()).eval()
    state = copy.deepcopy(teacher.state_dict())
    with torch.no_grad(), batch_statistics(teacher):
        out = teacher(torch.randn(4, 1, 8, 8) * 5 + 3)
    torch.testing.assert_close(out.mean((0, 2, 3)), teacher[4].bias.detach(), atol=1e-4, rtol=0)
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and all(
        m.momentum == 0.1 for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)
    )
    with batch_statistics(teacher, enabled=False):
        assert not teacher.training  # left as it is


def test_teacher_normalises_as_the_student_does():
    """Student BatchNorm in training mode: the teacher uses batch statistics; frozen (eval) student BatchNorm:
    running statistics."""
    mt = get_method("mt")(TrainConfig(method="mt", **TINY), MODEL)
    mt.hp = type(mt.hp)(noise_std=0.0)  # no input noise: the two passes are comparable
    x = torch.randn(2, 1, 32, 32) * 3
    mt.train()
    with torch.no_grad():
        batch_mode = mt.teacher_probs(x)
    for m in mt.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # what TrainConfig(freeze_bn=True) does to the whole method
    with torch.no_grad():
        frozen = mt.teacher_probs(x)
        mt.teacher.eval()
        ref = unet_logits(mt.teacher, x).softmax(1)
    torch.testing.assert_close(frozen, ref)
    assert not torch.allclose(frozen, batch_mode)


def test_input_noise_is_clipped_and_seeded():
    x = torch.zeros(4, 1, 32, 32)
    a = input_noise(x, generator=torch.Generator().manual_seed(1))
    assert a.abs().max() <= 0.2 and 0.08 < float(a.std()) < 0.1 and (a.abs() == 0.2).any()
    assert torch.equal(a, input_noise(x, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=">= 0"):
        input_noise(x, clip=-1)


def test_uamt_runs_T_noisy_passes_in_one_batch():
    uamt = UAMT(TrainConfig(method="uamt", **TINY), MODEL)
    sizes = []
    uamt.teacher.encoder.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    torch.manual_seed(0)
    x = torch.randn(3, 1, 32, 32)
    target, u = uamt.teacher_passes(x)
    assert sizes == [3 * (uamt.hp.passes + 1)] and uamt.hp.passes == 8
    assert target.shape == (3, 4, 32, 32) and u.shape == (3, 32, 32)
    assert float(u.min()) >= 0 and float(u.max()) <= math.log(4) + 1e-5
    # a teacher whose outputs do not depend on the input noise: u is the entropy of that one prediction
    with torch.no_grad():
        uamt.teacher.cnn.head.weight.zero_()
        uamt.teacher.cnn.head.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    target, u = uamt.teacher_passes(x)
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    torch.testing.assert_close(u, torch.full_like(u, float(-(p * torch.log(p + 1e-6)).sum())))


def test_uamt_mask_keeps_only_certain_pixels(batch):
    uamt = UAMT(TrainConfig(method="uamt", **{**TINY, "iterations": 10}), MODEL)
    with torch.no_grad():
        uamt.teacher.cnn.head.weight.zero_()
        uamt.teacher.cnn.head.bias.zero_()
    out = uamt.training_step(batch, 9)  # uniform teacher: u = ln 4 > H everywhere, nothing kept
    assert float(out["certain"]) == 0 and float(out["l_con"].detach()) == 0 and out["H"] <= math.log(2)
    with torch.no_grad():
        uamt.teacher.cnn.head.bias.copy_(torch.tensor([20.0, 0, 0, 0]))
    out = uamt.training_step(batch, 9)  # a sure teacher: every pixel kept, the loss is the plain MSE
    with torch.no_grad():
        p = unet_logits(uamt.model, batch["image"]).softmax(1)[2:]  # same weights, same batch statistics
    assert float(out["certain"]) == 1
    torch.testing.assert_close(
        out["l_con"],
        F.mse_loss(p, F.one_hot(torch.zeros_like(p[:, 0]).long(), 4).permute(0, 3, 1, 2).float()),
        atol=1e-5,
        rtol=1e-4,
    )


def test_cps_pseudo_labels_are_the_other_networks_detached_argmax(batch):
    l1, l2 = torch.randn(2, 4, 6, 6, requires_grad=True), torch.randn(2, 4, 6, 6, requires_grad=True)
    t1, t2 = cross_pseudo_labels(l1, l2)
    assert (
        torch.equal(t1, l2.argmax(1))
        and torch.equal(t2, l1.argmax(1))
        and not (t1.requires_grad or t2.requires_grad)
    )
    F.cross_entropy(l1, t1).backward()
    assert l2.grad is None and l1.grad is not None
    with pytest.raises(ValueError, match="differ in shape"):
        cross_pseudo_labels(l1, l2[:, :3])
    # in the method: the pseudo-supervision term gives no gradient through the target network's argmax
    cps = get_method("cps")(TrainConfig(method="cps", **{**TINY, "iterations": 10}), MODEL)
    out = cps.training_step(batch, 9)
    assert out["l_con"] > 0 and 0 <= float(out["pl_acc"]) <= 1


def test_two_networks_start_from_different_weights():
    for name in ("cps", "dct"):
        m = get_method(name)(TrainConfig(**TINY), MODEL)
        assert not torch.equal(m.model.encoder.conv1.weight, m.model2.encoder.conv1.weight)


def test_cct_perturbations():
    g = torch.Generator().manual_seed(0)
    f = torch.rand(3, 5, 4, 4) + 0.1
    r = feature_noise(f, 0.3, generator=g) / f - 1
    assert r.abs().max() <= 0.3 + 1e-6 and torch.allclose(r[0], r[2])  # one noise pattern for the batch
    d = feature_dropout(f, 0.3, generator=g)
    assert ((d == 0) | torch.isclose(d, f / 0.7)).all() and (d == 0).any()
    s = salient_dropout(f, generator=g)
    i, j = divmod(int(f.mean(1)[0].argmax()), 4)
    assert (s[0, :, i, j] == 0).all() and (
        s != 0
    ).any()  # the most active position is dropped, not everything
    assert torch.equal(salient_dropout(torch.zeros(1, 2, 3, 3)), torch.zeros(1, 2, 3, 3))
