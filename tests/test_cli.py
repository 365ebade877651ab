"""The `ucpcl` console command: each subcommand on small real inputs, and its errors."""

import json, subprocess, sys
from pathlib import Path

import pytest

from ucpcl.cli import main
from ucpcl.train import PRESET_METHOD

BIN = Path(sys.executable).parent
TINY = [
    "--preset",
    "small",
    "--iterations",
    "2",
    "--labeled",
    "2",
    "--quiet",
    "--set",
    "img_size=32",
    "batch_size=4",
    "labeled_bs=2",
    "per_class=8",
    "memory_size=16",
    "eval_every=2",
    "contrast_start=0",
]


@pytest.fixture(scope="module")
def phantom(module_tmp):
    out = module_tmp / "cardiac"
    r = subprocess.run(
        [BIN / "ucpcl", "phantom", "--kind", "cardiac", "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return out


def test_phantom_command_writes_the_acdc_layout(phantom):
    assert (phantom / "train_slices.list").is_file() and any((phantom / "data" / "slices").glob("*.h5"))


def test_train_then_evaluate(phantom, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-root", str(phantom), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "best: Dice" in printed and "last: Dice" in printed and (out / "metrics.json").is_file()
    assert (
        main(["evaluate", "--run", str(out), "--checkpoint", "last", "--split", "val", "--device", "cpu"])
        == 0
    )
    assert json.loads((out / "eval_val_last.json").read_text())["summary"]["n_cases"] > 0
    assert (
        main(["train", "--data-root", str(phantom), "--out", str(out), "--resume", *TINY]) == 0
    )  # finished: nothing to do
    saved = json.loads((out / "config.json").read_text())  # --preset small: the preset's method settings
    assert {k: saved[k] for k in PRESET_METHOD["small"]} == PRESET_METHOD["small"]


def test_train_puts_the_presets_method_settings_under_the_given_ones(phantom):
    from ucpcl.cli import build_parser, config_from_args

    parse = lambda *args: config_from_args(
        build_parser().parse_args(["train", "--data-root", str(phantom), *args])
    )
    small = parse("--preset", "small")
    assert (small.use_rot, small.batch_norm, small.transformer_lr, small.pseudo_weight) == (
        False,
        "per_stream",
        10.0,
        1.0,
    )
    mine = parse("--preset", "small", "--use-rot", "--set", "pseudo_weight=0")
    assert (mine.use_rot, mine.pseudo_weight, mine.transformer_lr) == (True, 0.0, 10.0)  # given fields win
    assert parse("--preset", "small", "--method", "sup").pseudo_weight == 0.0  # the baselines as they are
    paper = parse()  # the paper preset: the paper's method
    assert (paper.use_rot, paper.batch_norm, paper.transformer_lr, paper.pseudo_weight) == (
        True,
        "joint",
        1.0,
        0.0,
    )


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "ucpcl.cli", "phantom", "--kind", "lesion", "--out", str(tmp_path / "isic")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert any((tmp_path / "isic").rglob("*_segmentation.png"))


def test_convert_acdc_command(tmp_path):
    from ucpcl.data import toy_acdc_release

    raw = toy_acdc_release(tmp_path / "raw")
    assert main(["convert-acdc", str(raw), str(tmp_path / "acdc")]) == 0
    assert (tmp_path / "acdc" / "manifest.json").is_file() and (tmp_path / "acdc" / "test.list").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data-root", "X", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--data-root", "X", "--preset", "huge"], "unknown model preset 'huge'"),
        (["train", "--data-root", "X", "--dataset", "brats"], "dataset='brats' is invalid"),
        (["train", "--data-root", "X", "--set", "nonsense=1"], "unknown key"),
        (["train", "--data-root", "/definitely/missing"], "/definitely/missing"),
        (["evaluate", "--run", "/definitely/missing"], "not a run folder"),
    ],
)
def test_errors_are_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"ucpcl {args[0]}: error:")


def test_labeled_out_of_range_and_corrupt_resume(phantom, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--data-root",
                str(phantom),
                "--out",
                str(tmp_path / "a"),
                *TINY[:4],
                "--labeled",
                "999",
                "--quiet",
            ]
        )
        == 2
    )
    assert "999" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "last.pt").write_text("garbage")
    assert main(["train", "--data-root", str(phantom), "--out", str(tmp_path / "b"), "--resume", *TINY]) == 2
    assert "unreadable" in capsys.readouterr().err
