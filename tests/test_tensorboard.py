"""`tensorboard=True` (`ucpcl train --tensorboard`): the numbers of log.csv and val.csv as TensorBoard
scalars, read back from the event files; a resumed run keeps one value per step; a clear error without
the package."""

import csv, math, sys

import pytest

from ucpcl.cli import build_parser, config_from_args
from ucpcl.phantoms import write_phantom
from ucpcl.train import Trainer, TrainConfig, tensorboard_writer

TAGS = "loss l_sup l_con l_c l_e lambda_t H certain pl_acc anchors lr".split()


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    "Every scalar of the event files in `folder`: tag -> [(step, value)], read with TensorBoard's own reader."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_a_short_run_logs_every_term_to_tensorboard(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="tensorboard is not installed (pip install 'ucpcl[tensorboard]')"
    )
    root = write_phantom("cardiac", tmp_path / "phantom", num_patients=(4, 1, 1), size=48)
    cfg = TrainConfig(
        data_root=str(root),
        labeled=2,
        preset="small",
        img_size=32,
        iterations=3,
        batch_size=4,
        labeled_bs=2,
        per_class=8,
        memory_size=16,
        contrast_start=0,
        eval_every=3,
        log_every=1,
        tensorboard=True,
        out=str(tmp_path / "run"),
    )
    Trainer(cfg).fit(progress=False, stop_after=2)  # iterations 0 and 1, then a time limit
    Trainer(cfg).fit(resume=True, progress=False)  # iteration 2 and the validation
    events = scalars(tmp_path / "run" / "tensorboard")
    assert {f"train/{t}" for t in TAGS} | {"val/dice", "val/jaccard"} <= set(events), sorted(events)
    for tag, points in events.items():
        assert all(math.isfinite(v) for _, v in points), tag
    assert [s for s, _ in events["train/loss"]] == [0, 1, 2], "one value per step across the resume"
    assert [s for s, _ in events["val/dice"]] == [3]
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [pytest.approx(float(r["loss"]), rel=1e-6) for r in rows] == [v for _, v in events["train/loss"]]
    with open(tmp_path / "run" / "val.csv") as f:
        assert float(next(csv.DictReader(f))["dice"]) == pytest.approx(events["val/dice"][0][1], rel=1e-6)


def test_the_option_is_a_train_flag():
    a = build_parser().parse_args(["train", "--data-root", "/d", "--tensorboard"])
    assert config_from_args(a).tensorboard is True
    assert TrainConfig().tensorboard is False


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it now raises ImportError
    with pytest.raises(
        ValueError, match=r"needs the tensorboard package: pip install 'ucpcl\[tensorboard\]'"
    ):
        tensorboard_writer(tmp_path)
