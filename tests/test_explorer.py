"""The H explorer: its callback's data on a hand-made fixture, curves against panels, no model call after the
cache, the widgets (a usable H step, the picture at its shown size), stale moves dropped, the redraw time."""

import io, math, re, threading, time

import ipywidgets as widgets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ucpcl.explorer

from ucpcl.anchors import downsample_labels
from ucpcl.explorer import (
    FIGSIZE,
    H_STEP,
    MASKED,
    RIGHT,
    UNKNOWN,
    WRONG,
    Explorer,
    ExplorerData,
    LatestOnly,
    brief_trainer,
    compute_probs,
    curves,
    explore,
    load_images,
    logits_fn_of,
    panels,
    threshold_at,
)
from ucpcl.models import build_model
from ucpcl.uncertainty import THRESHOLD_MODES, ThresholdSchedule, certain_pseudo_label, entropy_map

C = 4
RIGHT_AT = np.array([1, 1, 1, 0, 1, 0, 1, 0], bool)  # ground truth agrees with the argmax at these pixels


def fixture_probs():
    "p_c, p_t (1, 4, 2, 4) whose mean mixes one-hot e_y and uniform by a = k / 8 at pixel k: u grows with k."
    a, y = torch.arange(8, dtype=torch.float64) / 8, torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    onehot = F.one_hot(y, C).double()
    mix = lambda s: ((1 - s)[:, None] * onehot + s[:, None] / C).T.reshape(1, C, 2, 4)
    gt = torch.where(torch.from_numpy(RIGHT_AT), y, (y + 1) % C).view(1, 2, 4)
    return mix(a / 2), mix(a * 1.5), mix(a), y, gt


@pytest.fixture(scope="module")
def fx():
    p_c, p_t, p_hat, y, gt = fixture_probs()
    u = entropy_map(p_hat)[0].flatten().clamp_min(0)
    data = ExplorerData(torch.zeros(1, 1, 2, 4), gt, p_c, p_t, grid=(1, 2), per_class=1)
    return data, u, y


def smooth_logits(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.interpolate(
        4 * torch.randn(n, C, size // 16, size // 16, generator=g), size=(size, size), mode="bilinear"
    )
    return z, z + torch.randn(z.shape, generator=g)


class CountingLogits:
    "A logits function that counts its calls; two decoders that disagree a little."

    def __init__(self, size):
        self.calls, self.size = 0, size

    def __call__(self, x):
        self.calls += 1
        return smooth_logits(len(x), self.size, seed=self.calls)


@pytest.fixture(scope="module")
def counted():
    fn = CountingLogits(64)
    images, labels = torch.rand(5, 1, 64, 64), torch.randint(-1, C, (5, 64, 64))
    data = ExplorerData.from_model(
        fn, images, labels, grid=8, batch_size=2, class_names=["bg", "RV", "Myo", "LV"]
    )
    return fn, data


# --- the callback's data on the fixture ---------------------------------------------------------


def test_fixture_entropies_are_known_and_increasing(fx):
    data, u, y = fx
    np.testing.assert_allclose(data.entropy[0].ravel(), u.numpy(), atol=1e-5)
    assert u[0] == 0 and (u.diff() > 0.05).all()
    np.testing.assert_array_equal(data.pseudo[0].ravel(), y.numpy())


def test_accuracy_of_kept_labels_is_the_hand_count(fx):
    data, u, _ = fx
    mids = ((u[:-1] + u[1:]) / 2).tolist()
    for k, H in enumerate(mids):  # keeps pixels 0..k exactly
        p = panels(data, 0, H)
        np.testing.assert_array_equal(p["mask"].ravel(), np.arange(8) <= k)
        assert p["share"] == pytest.approx((k + 1) / 8)
        assert p["accuracy"] == pytest.approx(RIGHT_AT[: k + 1].mean())
        expected = np.where(np.arange(8) <= k, np.where(RIGHT_AT, RIGHT, WRONG), MASKED)
        np.testing.assert_array_equal(p["errors"].ravel(), expected)
    assert panels(data, 0, math.log(C))["accuracy"] == pytest.approx(5 / 8)


def test_mask_share_falls_monotonically_as_H_falls(counted):
    _, data = counted
    Hs = np.linspace(math.log(C), 0, 40)  # decreasing
    for i in range(len(data)):
        shares = [panels(data, i, H)["share"] for H in Hs]
        assert all(b <= a for a, b in zip(shares, shares[1:]))
        assert shares[0] == 1.0 and shares[-1] == 0.0
        assert panels(data, i, 10.0)["share"] == 1.0


def test_H_zero_keeps_nothing_even_for_one_hot_pixels():
    p = (
        F.one_hot(torch.tensor([[[0, 3]]]), C).permute(0, 3, 1, 2).float()
    )  # exactly one-hot: u = -log(1 + eps) < 0 before clamping
    data = ExplorerData(torch.zeros(1, 1, 1, 2), None, p, p, grid=1)
    p0 = panels(data, 0, 0.0)
    assert (
        p0["share"] == 0
        and (p0["kept"] == -1).all()
        and len(p0["anchors"]) == 0
        and math.isnan(p0["accuracy"])
    )
    assert panels(data, 0, 1e-9)["share"] == 1.0


def test_panels_agree_with_the_training_code(counted):
    _, data = counted
    for H in (0.3, 0.7, 1.1):
        p = panels(data, 2, H)
        np.testing.assert_array_equal(
            p["kept"], certain_pseudo_label(data.p_c[2:3].double(), data.p_t[2:3].double(), H)[0].numpy()
        )
        np.testing.assert_array_equal(
            p["grid_labels"], downsample_labels(torch.from_numpy(p["kept"])[None], 8)[0].numpy()
        )
        assert (p["anchor_classes"] >= 0).all() and len(p["anchors"]) == min(
            data.per_class * C, (p["grid_labels"] >= 0).sum()
        )
        assert (p["errors"][p["label"] < 0] != RIGHT).all() and (
            (p["errors"] == UNKNOWN) == (p["mask"] & (p["label"] < 0))
        ).all()
        np.testing.assert_array_equal(p["available"], [(p["grid_labels"] == c).sum() for c in range(C)])


def test_anchors_do_not_flicker(counted):
    _, data = counted
    a, b = panels(data, 1, 0.8), panels(data, 1, 0.8)
    np.testing.assert_array_equal(a["anchors"], b["anchors"])
    torch.rand(100)  # the global generator does not matter
    np.testing.assert_array_equal(panels(data, 1, 0.8)["anchors"], a["anchors"])


def test_bad_calls_raise_clear_errors(fx, counted):
    data, _, _ = fx
    with pytest.raises(ValueError, match="out of range"):
        panels(data, 3, 0.5)
    with pytest.raises(ValueError, match="H must be >= 0"):
        panels(data, 0, -1.0)
    with pytest.raises(ValueError, match="use one of"):
        threshold_at("linear", 0.5, 0, 10)
    with pytest.raises(ValueError, match="must be \\(N, C_in, H, W\\)"):
        ExplorerData(torch.zeros(2, 1, 2, 4), None, data.p_c, data.p_t, 1)
    with pytest.raises(ValueError, match="need 1 names"):
        ExplorerData(torch.zeros(1, 1, 2, 4), None, data.p_c, data.p_t, 1, names=["a", "b"])
    with pytest.raises(ValueError, match="at the images' size"):
        compute_probs(lambda x: smooth_logits(len(x), 32), torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="unknown control"):
        Explorer(counted[1]).update(threshold=0.3)


# --- curves --------------------------------------------------------------------------------------


def test_curves_agree_with_panels(counted):
    _, data = counted
    Hs = np.linspace(0, math.log(C), 17)
    t = curves(data, Hs)
    assert list(t.columns) == [
        "H",
        "kept",
        "accuracy",
        "anchors bg",
        "anchors RV",
        "anchors Myo",
        "anchors LV",
    ]
    for i, H in enumerate(Hs):
        ps = [panels(data, j, H) for j in range(len(data))]
        assert t.kept[i] == pytest.approx(np.mean([p["share"] for p in ps]))
        known = sum((p["mask"] & (p["label"] >= 0)).sum() for p in ps)
        right = sum((p["mask"] & (p["kept"] == p["label"])).sum() for p in ps)
        assert (math.isnan(t.accuracy[i]) and known == 0) or t.accuracy[i] == pytest.approx(right / known)
        np.testing.assert_allclose(t.iloc[i, 3:].to_numpy(float), np.mean([p["available"] for p in ps], 0))
    one = curves(data, Hs, index=3)
    np.testing.assert_allclose(one.kept, [panels(data, 3, H)["share"] for H in Hs])
    assert (np.diff(t.kept) >= 0).all() and all((np.diff(t[c]) >= 0).all() for c in t.columns[3:])


def test_curves_on_the_fixture(fx):
    data, u, _ = fx
    mids = ((u[:-1] + u[1:]) / 2).tolist()
    t = curves(data, [0.0] + mids + [math.log(C)])
    np.testing.assert_allclose(t.kept, np.arange(9) / 8)
    np.testing.assert_allclose(t.accuracy[1:], np.cumsum(RIGHT_AT) / np.arange(1, 9))
    assert math.isnan(t.accuracy[0])


# --- no recompute --------------------------------------------------------------------------------


def test_moving_any_control_never_calls_the_model(counted):
    fn, data = counted
    assert fn.calls == 3  # 5 images in batches of 2, once
    ex = Explorer(data)
    c = ex.controls
    before, redraws = fn.calls, ex.redraws
    for H in (0.1, 0.5, 0.9, 1.3):
        c["H"].value = H  # the slider's callback
    c["mode"].value = "schedule"
    c["iteration"].value = 100
    c["max_iterations"].value = 200
    c["index"].value = 4
    c["mode"].value = "fixed"
    c["index"].value = 0
    assert ex.wait()  # the moves were drawn on the worker, newest first: at most one redraw each
    assert redraws < ex.redraws <= redraws + 10 and ex.last["index"] == 0 and ex.last["H"] == ex.state["H"]
    ex.update(H=0.2, index=2)
    assert fn.calls == before
    assert ex.last["index"] == 2 and ex.last["H"] == 0.2


def test_schedule_mode_applies_the_schedule_and_the_slider_follows(counted):
    _, data = counted
    ex = Explorer(data, mode="schedule", iteration=0)
    assert ex.last["H"] == pytest.approx(ThresholdSchedule()(0, data.max_iterations))
    assert ex.controls["H"].disabled and ex.controls["H"].value == pytest.approx(ex.last["H"])
    p = ex.update(iteration=3000, max_iterations=6000)
    assert p["H"] == pytest.approx(ThresholdSchedule()(3000, 6000))
    ex.update(max_iterations=1000)  # the iteration is clipped to the new run length
    assert (
        ex.state["iteration"] == 1000
        and ex.controls["iteration"].value == 1000
        and ex.last["H"] == pytest.approx(math.log(2))
    )
    ex.update(mode="fixed")
    assert not ex.controls["H"].disabled and ex.last["H"] == pytest.approx(
        math.log(2)
    )  # fixed mode starts where the schedule was


# --- the widget ---------------------------------------------------------------------------------


def test_the_widget_builds(counted):
    _, data = counted
    ex = Explorer(data)
    c = ex.controls
    assert isinstance(ex.widget, widgets.VBox) and isinstance(ex.view, widgets.Image)
    assert isinstance(c["H"], widgets.FloatSlider) and (c["H"].min, c["H"].max) == (
        0.0,
        pytest.approx(math.log(C)),
    )
    modes = [v for _, v in c["mode"].options]
    assert isinstance(c["mode"], widgets.ToggleButtons) and sorted(modes) == sorted(THRESHOLD_MODES)
    assert isinstance(c["iteration"], widgets.IntSlider) and isinstance(c["index"], widgets.Dropdown)
    assert [v for _, v in c["index"].options] == list(range(len(data)))
    assert ex.view.value[:8] == b"\x89PNG\r\n\x1a\n"
    first = ex.view.value
    ex.update(H=0.05)
    assert ex.view.value != first  # the picture changed
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_one_name_for_the_modes():
    "The explorer's modes are the threshold modes of `ucpcl.uncertainty`, under that one name."
    assert not hasattr(ucpcl.explorer, "H_MODES")
    with pytest.raises(ValueError, match=re.escape(str(list(THRESHOLD_MODES)))):
        threshold_at("ramp", 0.5, 0, 10)


def test_H_moves_by_a_step_a_person_can_use(counted):
    "About 0.01 nat per arrow key: 140 presses across [0, ln 4], not 1,400; ln 2 and ln 4 are on the slider."
    _, data = counted
    ex = Explorer(data, mode="schedule", iteration=data.max_iterations)
    h = ex.controls["H"]
    assert h.step == H_STEP and 0.009 < H_STEP < 0.011 and round((h.max - h.min) / h.step, 9) == 140
    assert round(math.log(2) / h.step, 9) == 70  # the schedule's final H is on the slider, not next to it
    assert h.readout_format == ".3f" and f"{h.value:{h.readout_format}}" == "0.693" and h.disabled
    ex.update(mode="fixed")
    h.value = 140 * h.step  # 140 presses of the right arrow
    assert ex.wait() and ex.last["H"] == pytest.approx(math.log(4))


@pytest.mark.parametrize("width", [633, 960, 1001])
def test_the_picture_is_drawn_at_the_size_it_is_shown(counted, width):
    "The PNG is `width` pixels wide and the widget shows it at that width (smaller only where room is short)."
    _, data = counted
    ex = Explorer(data, width=width)
    png = Image.open(io.BytesIO(ex.view.value))
    assert png.width == width and abs(png.height - width * FIGSIZE[1] / FIGSIZE[0]) < 1
    assert (ex.view.layout.width, ex.view.layout.height, ex.view.layout.max_width) == (
        f"{width}px",
        "auto",
        "100%",
    )
    ex.update(index=1, H=0.3)
    assert Image.open(io.BytesIO(ex.view.value)).size == png.size


def test_latest_only_merges_the_requests_made_during_a_call():
    box, seen, gate = {"v": 0}, [], threading.Event()

    def slow():
        gate.wait(10)
        seen.append(box["v"])

    latest = LatestOnly(slow)
    for v in range(1, 101):
        box["v"] = v
        latest.request()
    gate.set()
    assert latest.wait(10) and 1 <= latest.calls <= 2 and seen[-1] == 100
    latest.request()
    assert latest.wait(10) and latest.calls == len(seen) <= 3


def test_a_burst_of_moves_during_a_redraw_costs_one_more_redraw(counted):
    "Without a browser: fifty slider moves arrive while a redraw runs; one more redraw follows, of the last."
    _, data = counted
    ex = Explorer(data)
    before = ex.redraws
    with ex._draw_lock:  # a redraw is in progress
        for H in np.linspace(0.05, 1.3, 50):
            ex.controls["H"].value = round(float(H), 2)
        assert ex.state["H"] == 1.3  # each move is applied at once; only the drawing waits
    assert ex.wait(30)
    assert ex.redraws == before + 1 and ex.last["H"] == 1.3
    assert Image.open(io.BytesIO(ex.view.value)).size[0] == ex.width


def test_dragging_draws_only_fresh_states_and_ends_on_the_last(counted, capsys):
    "A drag at 60 moves a second: fewer redraws than moves, and the picture catches up within about a redraw."
    _, data = counted
    ex = Explorer(data)
    before, Hs = ex.redraws, np.round(np.linspace(0.05, 1.3, 60), 2)
    for H in Hs:
        ex.controls["H"].value = float(H)
        time.sleep(1 / 60)
    t = time.perf_counter()
    assert ex.wait(30)
    lag, n = time.perf_counter() - t, ex.redraws - before
    with capsys.disabled():
        print(
            f"\nexplorer: a drag of {len(Hs)} moves drew {n} pictures, the last {1000 * lag:.0f} ms after it"
        )
    assert ex.last["H"] == Hs[-1] and 1 <= n <= len(Hs)
    assert lag <= 2 * max(ex.seconds) + 0.1  # at most the redraw in progress and the last one


def test_an_error_in_a_redraw_is_raised_by_wait(counted, monkeypatch, capsys):
    _, data = counted
    ex = Explorer(data)
    monkeypatch.setattr(ex, "redraw", lambda: 1 / 0)
    ex.controls["H"].value = 0.77
    with pytest.raises(ZeroDivisionError):
        ex.wait(30)
    assert "ZeroDivisionError" in capsys.readouterr().err  # also printed where a notebook shows it


def test_redraw_time_at_224(capsys):
    "Moving H on 224x224 images redraws the 960-pixel picture in well under a second (0.2 s of CPU at most)."
    fn = CountingLogits(224)
    data = ExplorerData.from_model(
        fn, torch.rand(3, 1, 224, 224), torch.randint(0, C, (3, 224, 224)), grid=28, per_class=16
    )
    ex = Explorer(data)
    wall, cpu = [], []
    for H in np.linspace(0.05, 1.35, 12):
        t, c = time.perf_counter(), time.process_time()
        ex.update(H=float(H))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    switch = []
    for i in (1, 2, 0):
        c = time.process_time()
        ex.update(index=i)
        switch.append(time.process_time() - c)
    with capsys.disabled():
        wall_ms, cpu_ms, switch_ms = (1000 * np.median(x) for x in (wall, cpu, switch))
        print(
            f"\nexplorer redraw of the {ex.width}-pixel picture at 224x224: H move median {wall_ms:.0f} ms "
            f"wall, {cpu_ms:.0f} ms CPU; image switch median {switch_ms:.0f} ms CPU"
        )
    assert fn.calls == 1
    assert np.median(cpu) < 0.2 and np.median(wall) < 0.5


# --- sources and images ---------------------------------------------------------------------------


def test_logits_fn_of_a_network_and_one_without_transformer():
    torch.manual_seed(0)
    net = build_model("small", img_size=64)
    net.train()
    x = torch.rand(2, 1, 64, 64)
    lc, lt = logits_fn_of(net)(x)
    assert lc.shape == lt.shape == (2, 4, 64, 64) and net.training  # eval inside, training mode restored
    assert not torch.equal(lc, lt)
    plain = build_model("small", img_size=64, transformer=False)
    lc, lt = logits_fn_of(plain)(x)
    assert torch.equal(lc, lt)
    data = ExplorerData.from_model(net, x)
    assert (
        data.grid == (8, 8)
        and (data.gt == -1).all()
        and data.class_names == ["class 0", "class 1", "class 2", "class 3"]
    )
    with pytest.raises(ValueError, match="cannot get logits"):
        logits_fn_of("not a model")


def test_load_images_reads_acdc_slices_volumes_and_isic(tmp_path):
    from ucpcl.data import ACDCSlices, ACDCVolumes, ISICImages
    from ucpcl.phantoms import write_phantom

    root = write_phantom(
        "cardiac", tmp_path / "acdc", num_patients=(1, 1, 1), size=64, slices=(4, 4), frames=("ED",)
    )
    ims, lbs, names = load_images(ACDCVolumes(root, "val"), n=3, size=32)
    assert ims.shape == (len(names), 1, 32, 32) and lbs.shape == (len(names), 32, 32) and 1 <= len(names) <= 3
    assert all((l > 0).any() for l in lbs) and all("slice" in n for n in names)
    ims, lbs, names = load_images(ACDCSlices(root), n=2)
    assert ims.shape == (2, 1, 64, 64) and lbs.dtype == torch.long
    isic = write_phantom("lesion", tmp_path / "isic", num_images=3, sizes=(40, 60))
    ims, lbs, names = load_images(ISICImages(isic), n=3, size=32)
    assert ims.shape == (3, 3, 32, 32) and set(lbs.unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="different sizes"):
        load_images(ISICImages(isic), n=3)


def test_explore_a_run_folder(tmp_path):
    "A run folder (Trainer.from_run) brings its model, validation images, schedule and class names."
    trainer = brief_trainer(tmp_path, iterations=2, img_size=64, batch_size=4, labeled_bs=2, per_class=8)
    ex = explore(tmp_path / "run", n=3)
    d = ex.data
    assert len(d) <= 3 and d.images.shape[-1] == 64 and d.class_names == ["background", "RV", "Myo", "LV"]
    assert d.max_iterations == 2 and d.schedule == ThresholdSchedule(
        trainer.cfg.threshold_mode, trainer.cfg.threshold
    )
    assert (d.gt >= 0).all() and ex.redraws == 1
    with pytest.raises(ValueError, match="give images"):
        explore(trainer.method.model)
