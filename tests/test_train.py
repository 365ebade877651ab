"""The trainer: every Table 2 / Table 3 switch runs, resume is exact, faults give clear errors."""

import csv, json
from pathlib import Path

import pytest
import torch

from ucpcl.core import seed_everything
from ucpcl.phantoms import write_phantom
from ucpcl.train import PRESET_METHOD, NonFiniteLoss, TrainConfig, Trainer, get_method, train

TINY = dict(
    preset="small",
    img_size=32,
    batch_size=4,
    labeled_bs=2,
    per_class=8,
    memory_size=16,
    contrast_start=0.0,
    eval_every=3,
    save_every=3,
    log_every=1,
    labeled=2,
)


@pytest.fixture(scope="module")
def phantom(module_tmp):
    return write_phantom("cardiac", module_tmp / "data" / "cardiac", seed=0, num_patients=(4, 2, 2))


def cfg(phantom, out, **kw):
    return TrainConfig(data_root=str(phantom), out=str(out), **{**TINY, "iterations": 3, **kw})


def log_rows(out):
    with open(Path(out) / "log.csv") as f:
        return list(csv.DictReader(f))


ROWS = {  # the rows of Table 2, then Table 3's feature levels and the exact form of Eq. 12
    "supervised": dict(method="sup"),
    "l_con": dict(use_con=True, use_rot=False, contrast="none"),
    "l_e": dict(use_con=False, use_rot=True, contrast="none"),
    "l_con+l_e": dict(use_con=True, use_rot=True, contrast="none"),
    "l_con+l_e+l_c^sup": dict(contrast="labeled"),
    "l_con+l_e+l_c^pseudo": dict(contrast="pseudo"),
    "l_con+l_e+l_c": dict(contrast="uncertainty"),
    "conv1": dict(contrast_level=1),
    "conv3": dict(contrast_level=3),
    "conv4": dict(contrast_level=4, img_size=64),
    "fixed-H": dict(threshold_mode="fixed", threshold=0.3),
    "rotation-all": dict(rotation_form="all"),
    "small-preset-method": PRESET_METHOD["small"],  # + l_p, no turns, batch norm per stream, f_t's lr x 10
}


@pytest.mark.parametrize("row", list(ROWS))
def test_each_switch_combination_trains(phantom, tmp_path, row):
    kw = ROWS[row]
    m = train(cfg(phantom, tmp_path, **kw), progress=False)
    rows = log_rows(tmp_path)
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert set(m["test"]) == {"best", "last"} and 0 <= m["test"]["best"]["dice"] <= 1
    if kw.get("method") == "sup":
        return
    c = TrainConfig(**{**TINY, **kw})
    l_c = [float(r["l_c"]) for r in rows]
    l_e = [float(r["l_e"]) for r in rows]
    l_con = [float(r["l_con"]) for r in rows]
    assert (max(l_c) > 0) == (c.contrast != "none"), l_c
    assert (max(l_e) > 0) == c.use_rot and (max(l_con) > 0) == c.use_con
    if c.contrast == "uncertainty":
        assert 0 <= float(rows[-1]["certain"]) <= 1 and float(rows[-1]["H"]) > 0
    l_p = [r["l_p"] for r in rows]  # log.csv's l_p column: filled when the term is on, empty when off
    assert all(v == "" for v in l_p) if c.pseudo_weight == 0 else all(float(v) >= 0 for v in l_p)


def _state(t: Trainer):
    return {k: v.clone() for k, v in t.method.state_dict().items()}


@pytest.mark.parametrize("method", ["paper", "small"])
def test_resumed_run_equals_uninterrupted_run(phantom, tmp_path, method):
    "Bit for bit, the paper's method and the small preset's (l_p's perturbations are drawn again alike)."
    kw = dict(iterations=6, **PRESET_METHOD[method])
    full = Trainer(cfg(phantom, tmp_path / "full", **kw)).fit(progress=False)
    part = Trainer(cfg(phantom, tmp_path / "part", **kw)).fit(progress=False, stop_after=4)
    assert part.iteration == 4
    seed_everything(12345)
    torch.rand(100)  # a fresh process would have other random state
    resumed = Trainer(cfg(phantom, tmp_path / "part", **kw)).fit(resume=True, progress=False)
    assert resumed.iteration == 6
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys() and any("queue" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert [r["iteration"] for r in log_rows(tmp_path / "part")] == [
        str(i) for i in range(6)
    ]  # no duplicated rows


def test_batches_do_not_depend_on_workers(phantom, tmp_path):
    c = cfg(phantom, tmp_path, iterations=4)
    one = [b["image"] for b in Trainer(c).loader(1)]
    two = [b["image"] for b in Trainer(c.replace(num_workers=2)).loader(1)]
    assert len(one) == 3 and all(torch.equal(x, y) for x, y in zip(one, two))


def test_unlabeled_masks_are_only_monitored(phantom, tmp_path):
    "Training with and without the unlabeled images' masks gives the same weights: they never enter a loss."
    from ucpcl.data import build_data

    c = cfg(phantom, tmp_path / "a", iterations=2)
    t1 = Trainer(c, data=build_data("acdc", phantom, size=32, labeled=2, monitor=True)).fit(progress=False)
    t2 = Trainer(
        c.replace(out=str(tmp_path / "b")),
        data=build_data("acdc", phantom, size=32, labeled=2, monitor=False),
    ).fit(progress=False)
    a, b = _state(t1), _state(t2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "pl_acc" in log_rows(tmp_path / "a")[-1] and log_rows(tmp_path / "a")[-1]["pl_acc"] != ""


def test_non_finite_loss_stops_with_the_term_and_keeps_last_good_checkpoint(phantom, tmp_path, monkeypatch):
    t = Trainer(cfg(phantom, tmp_path, iterations=6, save_every=1))
    step = t.method.training_step

    def poisoned(batch, it):
        out = step(batch, it)
        if it == 3:
            out["l_con"] = out["l_con"] * float("nan")
            out["loss"] = out["loss"] + out["l_con"]
        return out

    monkeypatch.setattr(t.method, "training_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"iteration 3: term\(s\) \['loss', 'l_con'\]"):
        t.fit(progress=False)
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["iteration"] == 3 and all(
        torch.isfinite(v).all() for v in ck["method"].values() if v.is_floating_point()
    )


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(phantom, tmp_path):
    Trainer(cfg(phantom, tmp_path / "sup", method="sup")).fit(progress=False)
    with pytest.raises(ValueError, match="written by a different run: method: 'sup' there, 'ucpcl' here"):
        Trainer(cfg(phantom, tmp_path / "sup")).fit(resume=True, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        Trainer(cfg(phantom, tmp_path / "bad")).fit(resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(cfg(phantom, tmp_path / "none")).fit(resume=True, progress=False)


def test_a_run_from_imagenet_weights_is_rebuilt_without_them(phantom, tmp_path, monkeypatch):
    "evaluate/predict take every weight from the checkpoint: they need no ImageNet file and fetch none."
    Trainer(cfg(phantom, tmp_path)).fit(progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "pretrained": "IMAGENET1K_V1"}))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no cached ImageNet weights here
    t = Trainer.from_run(tmp_path, "best")
    ck = torch.load(tmp_path / "best.pt", weights_only=True)["method"]
    assert all(torch.equal(v, ck[k]) for k, v in t.method.state_dict().items())


def test_a_checkpoint_of_the_first_format_is_refused_with_the_way_out(phantom, tmp_path):
    "Format 1 held the Transformer decoder's expansion in another order: it would load and compute nonsense."
    Trainer(cfg(phantom, tmp_path)).fit(progress=False)
    ck = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ck.pop("format") == 2
    torch.save(ck, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="has format 1, this ucpcl reads format 2.*shuffle_to_blocks"):
        Trainer.from_run(tmp_path, str(tmp_path / "old.pt"))


def test_best_checkpoint_holds_weights_only_and_is_refused_for_resuming(phantom, tmp_path):
    t = Trainer(cfg(phantom, tmp_path)).fit(progress=False)
    best, last = (torch.load(tmp_path / n, weights_only=False) for n in ("best.pt", "last.pt"))
    assert "optimizer" in last and "rng" in last and "optimizer" not in best and "rng" not in best
    assert best["method"].keys() == last["method"].keys() and best["config"] == last["config"]
    assert (tmp_path / "best.pt").stat().st_size < 0.6 * (tmp_path / "last.pt").stat().st_size
    assert Trainer.from_run(tmp_path, "best").iteration == 0  # evaluation loads the weights, not the counters
    with pytest.raises(ValueError, match="holds the weights only .*resume from the run's last.pt"):
        t.load(tmp_path / "best.pt")


def test_bad_configuration_and_data_errors(phantom, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'mtt'"):
        get_method("mtt")
    with pytest.raises(ValueError, match="labeled"):
        Trainer(cfg(phantom, tmp_path, labeled=99))
    with pytest.raises(ValueError):
        Trainer(cfg(tmp_path / "missing", tmp_path))
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")


def test_test_split_is_used_once_and_metrics_say_which_checkpoint(phantom, tmp_path):
    m = train(cfg(phantom, tmp_path, iterations=6), progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"] == json.loads(json.dumps(m["test"])) and "validation split" in saved["selection"]
    assert saved["best_val"]["iteration"] in (3, 6) and [r["iteration"] for r in saved["val_history"]] == [
        3.0,
        6.0,
    ]
    assert {"hd95", "missed", "spurious"} <= set(saved["test"]["best"])


def test_per_class_metrics_carry_the_folders_class_names(phantom, tmp_path):
    abdomen = write_phantom("abdomen", tmp_path / "abdomen", seed=0, num_patients=(3, 1, 1), size=48)
    m = train(cfg(abdomen, tmp_path / "run", method="sup", iterations=2, eval_every=2), progress=False)
    organs = ["liver", "kidneys", "spleen"]
    for split in ("best", "last"):
        assert list(m["test"][split]["dice_per_class"]) == organs
        assert list(m["test"][split]["dice_2d_per_class"]) == organs
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(saved["test"]["best"]["dice_3d_per_class"]) == organs
    cardiac = train(
        cfg(phantom, tmp_path / "cardiac", method="sup", iterations=2, eval_every=2), progress=False
    )
    assert list(cardiac["test"]["best"]["dice_per_class"]) == ["RV", "Myo", "LV"]  # ACDC's names


def test_bf16_autocast_steps_on_cpu(phantom, tmp_path):
    # the queue fills at the first step, so the pixel contrast runs against it from the second. On a GPU the
    # anchors came float32 and autocast's product bf16 (the CPU autocast keeps bf16): 03_contrast checks that
    t = Trainer(cfg(phantom, tmp_path, amp="bf16"))
    assert t.amp
    it = iter(t.loader(0))
    terms = [t.step(next(it), i) for i in range(3)]
    assert all(v == v for step in terms for v in step.values())
    assert terms[-1]["l_c"] > 0


@pytest.mark.slow
def test_compiled_networks_train_as_the_eager_ones(phantom, tmp_path, monkeypatch):
    "compile=True: the step runs compiled, gives the eager loss and update, and writes plain weights."
    # the compiled dropout draws from eager's generator (not inductor's own), so both runs draw alike
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # its C++ builds, removed after
    # the second step must reuse the first one's graphs: a recompile is an error
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    runs = {}
    for name in ("eager", "compiled"):
        t = Trainer(cfg(phantom, tmp_path / name, iterations=2, compile=name == "compiled"))
        assert (t.method.model._compiled_call_impl is not None) == (name == "compiled")
        runs[name] = (t.fit(progress=False), [float(r["loss"]) for r in log_rows(tmp_path / name)])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the step
    (eager, loss), (compiled, loss_c) = runs["eager"], runs["compiled"]
    assert len(loss) == 2 and loss_c == pytest.approx(loss, rel=1e-3)
    after, after_c = eager.method.state_dict(), compiled.method.state_dict()
    assert after.keys() == after_c.keys()  # the same names: checkpoints are interchangeable
    # the two steps' update of the weights (from the seed's initial ones) agrees to float rounding
    before = Trainer(cfg(phantom, tmp_path / "initial", iterations=1)).method.state_dict()
    floats = [k for k, v in before.items() if v.is_floating_point()]
    change = torch.cat([(after[k] - before[k]).flatten() for k in floats])
    gap = torch.cat([(after_c[k] - after[k]).flatten() for k in floats])
    rel = (gap.norm() / change.norm()).item()
    print(f"compiled vs eager: losses {loss_c} / {loss}, the update differs by {rel:.2e} of its size")
    assert rel < 1e-2  # measured: 4e-05 after one step, 2e-03 after two (rounding, grown by the second step)
    # evaluation rebuilds the run eagerly
    back = Trainer.from_run(tmp_path / "compiled", "last")
    assert back.method.model._compiled_call_impl is None and back.cfg.compile is False


def _model_state(t: Trainer):
    return {k: v.detach().clone() for k, v in t.method.model.state_dict().items()}


def test_weight_average_is_validated_and_kept_as_best_pt(phantom, tmp_path, monkeypatch):
    "weight_average: validation and best.pt see the moving average, training and last.pt the trained weights."
    seen = {"trained": [], "validated": {}}
    update, validate = Trainer.update_average, Trainer.validate

    def recording_update(self):
        seen["trained"].append(_model_state(self))  # theta_n, before it enters the average
        update(self)

    def recording_validate(self, it):
        self.swap_average()
        seen["validated"][it] = _model_state(self)  # the average: what validation must see
        self.swap_average()
        return validate(self, it)

    monkeypatch.setattr(Trainer, "update_average", recording_update)
    monkeypatch.setattr(Trainer, "validate", recording_validate)
    beta = 0.5  # below (1 + n) / (10 + n) from n = 9: both sides of the min within a short run
    t = Trainer(cfg(phantom, tmp_path / "avg", iterations=12, eval_every=6, weight_average=beta)).fit(
        progress=False
    )
    thetas = seen["trained"]
    assert len(thetas) == 12 and sorted(seen["validated"]) == [6, 12]
    expect = {k: v.clone() for k, v in thetas[0].items()}
    for n, theta in enumerate(thetas[1:], start=2):
        d = min(beta, (1 + n) / (10 + n))
        for k, v in theta.items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        if n in seen["validated"]:
            got = seen["validated"][n]
            for k in expect:
                assert torch.allclose(got[k].float(), expect[k].float(), atol=1e-6), f"{k} at {n}"
    monkeypatch.undo()
    # training never reads the average: the trained weights are those of the same run without it
    plain = Trainer(cfg(phantom, tmp_path / "plain", iterations=12, eval_every=6)).fit(progress=False)
    t.test(), plain.test()
    assert all(torch.equal(v, _state(plain)[k]) for k, v in _state(t).items())
    best, last = (torch.load(tmp_path / "avg" / n, weights_only=True) for n in ("best.pt", "last.pt"))
    model = {k.removeprefix("model."): v for k, v in best["method"].items() if k.startswith("model.")}
    assert all(torch.equal(model[k], v) for k, v in seen["validated"][best["best"]["iteration"]].items())
    assert all(torch.equal(v, last["method"][f"model.{k}"]) for k, v in thetas[-1].items())
    assert "average" in last and "average" not in best
    metrics = json.loads((tmp_path / "avg" / "metrics.json").read_text())
    assert "moving average of the weights (decay 0.5" in metrics["selection"]
    assert "moving average" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())["selection"]


def test_a_resumed_run_continues_the_same_weight_average(phantom, tmp_path):
    c = lambda out, **kw: cfg(phantom, out, iterations=6, weight_average=0.9, **kw)
    full = Trainer(c(tmp_path / "full")).fit(progress=False)
    Trainer(c(tmp_path / "part")).fit(progress=False, stop_after=4)
    resumed = Trainer(c(tmp_path / "part")).fit(resume=True, progress=False)
    assert resumed.average.keys() == full.average.keys()
    assert all(torch.equal(v, resumed.average[k]) for k, v in full.average.items())
    for name in ("best.pt", "last.pt"):
        a, b = (
            torch.load(p / name, weights_only=True)["method"] for p in (tmp_path / "full", tmp_path / "part")
        )
        assert all(torch.equal(v, b[k]) for k, v in a.items()), name
    with pytest.raises(ValueError, match="different run: weight_average: 0.9 there, 0.0 here"):
        Trainer(cfg(phantom, tmp_path / "part", iterations=6)).load(tmp_path / "part" / "last.pt")
    with pytest.raises(ValueError, match="weight_average.*a decay in \\[0, 1\\)"):
        TrainConfig(weight_average=1.0)


def test_a_checkpoint_older_than_a_field_has_that_fields_default(phantom, tmp_path):
    "A last.pt written before `weight_average` existed resumes as a run without the average, as it was."
    Trainer(cfg(phantom, tmp_path, iterations=6)).fit(progress=False, stop_after=3)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    del ck["config"]["weight_average"]
    torch.save(ck, tmp_path / "last.pt")
    t = Trainer(cfg(phantom, tmp_path, iterations=6)).fit(resume=True, progress=False)
    assert t.iteration == 6 and t.average is None
    with pytest.raises(ValueError, match="weight_average: 0.0 there, 0.99 here"):
        Trainer(cfg(phantom, tmp_path, iterations=6, weight_average=0.99)).load(tmp_path / "last.pt")


def test_transformer_lr_gives_the_transformer_decoder_its_own_learning_rate(phantom, tmp_path):
    "transformer_lr = k: f_t's first SGD step is k times as long, every other parameter's is unchanged."
    starts, steps = {}, {}
    for k in (1.0, 10.0):
        t = Trainer(cfg(phantom, tmp_path / f"k{k}", iterations=8, transformer_lr=k))
        starts[k] = {n: p.detach().clone() for n, p in t.method.named_parameters()}
        t.fit(progress=False, stop_after=1)  # momentum has no history at the first step: lr * (grad + wd * p)
        steps[k] = {n: p.detach() - starts[k][n] for n, p in t.method.named_parameters()}
        base = t.set_lr(5)
        lrs = [g["lr"] for g in t.opt.param_groups]
        assert lrs == ([base] if k == 1 else [base, pytest.approx(k * base)])
    # the same network at the start
    assert all(torch.equal(v, starts[10.0][n]) for n, v in starts[1.0].items())
    in_f_t = [n for n in steps[1.0] if ".transformer." in f".{n}"]
    assert in_f_t and len(in_f_t) < len(steps[1.0])
    for n, d in steps[1.0].items():
        if d.abs().max() == 0:
            continue  # a parameter that this step's loss did not reach
        k = 10.0 if n in in_f_t else 1.0
        ulp = torch.finfo(d.dtype).eps * float(starts[1.0][n].abs().max())  # p_after - p_before's rounding
        torch.testing.assert_close(steps[10.0][n], k * d, rtol=1e-3, atol=(k + 1) * ulp, msg=n)


def test_transformer_lr_needs_a_transformer_decoder_and_a_resume_needs_the_same(phantom, tmp_path):
    with pytest.raises(ValueError, match="transformer_lr=10.0: method 'sup' trains no Transformer decoder"):
        Trainer(cfg(phantom, tmp_path / "sup", method="sup", transformer_lr=10.0))
    with pytest.raises(ValueError, match="transformer_lr.*a factor > 0"):
        TrainConfig(transformer_lr=0.0)
    Trainer(cfg(phantom, tmp_path / "run", iterations=6, transformer_lr=10.0)).fit(
        progress=False, stop_after=3
    )
    with pytest.raises(ValueError, match="different run: transformer_lr: 10.0 there, 1.0 here"):
        Trainer(cfg(phantom, tmp_path / "run", iterations=6)).load(tmp_path / "run" / "last.pt")
    t = Trainer(cfg(phantom, tmp_path / "run", iterations=6, transformer_lr=10.0)).fit(
        resume=True, progress=False
    )
    assert t.iteration == 6 and [g["lr_scale"] for g in t.opt.param_groups] == [1.0, 10.0]


def test_pseudo_weight_is_part_of_the_run_and_a_setting_of_ucpcl(phantom, tmp_path):
    Trainer(cfg(phantom, tmp_path / "run", iterations=6, pseudo_weight=1.0)).fit(progress=False, stop_after=3)
    with pytest.raises(ValueError, match="different run: pseudo_weight: 1.0 there, 0.0 here"):
        Trainer(cfg(phantom, tmp_path / "run", iterations=6)).load(tmp_path / "run" / "last.pt")
    with pytest.raises(ValueError, match="l_p is a setting of method='ucpcl'"):
        TrainConfig(method="mt", pseudo_weight=1.0)
    with pytest.raises(ValueError, match="pseudo_weight=-0.5 is invalid: a weight >= 0"):
        TrainConfig(pseudo_weight=-0.5)
