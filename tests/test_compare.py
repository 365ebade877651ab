"""The compare runner: a tiny grid writes the tables, a second call trains nothing, a half-finished run
resumes, a changed configuration is retrained, and Tables 2 and 3 have the paper's rows."""

import csv, json
from pathlib import Path

import pytest

import ucpcl.compare as cmp
from ucpcl.cli import main
from ucpcl.compare import (
    ABLATION_ROWS,
    FEATURE_ROWS,
    Grid,
    RunSpec,
    ablation,
    ablation_marks,
    compare,
    feature_levels,
    run_config,
    run_status,
)
from ucpcl.phantoms import write_phantom
from ucpcl.train import Trainer

TINY = dict(img_size=32, batch_size=4, labeled_bs=2, per_class=8, memory_size=16, log_every=1)


@pytest.fixture(scope="module")
def phantom(module_tmp):
    return write_phantom("cardiac", module_tmp / "data" / "cardiac", seed=0, num_patients=(4, 2, 2))


@pytest.fixture
def count_training(monkeypatch):
    "Count the calls of ucpcl.train.train made by the runner."
    calls, real = [], cmp.train

    def counted(cfg, resume=False, progress=True, data=None):
        calls.append((Path(cfg.out).name, resume))
        return real(cfg, resume=resume, progress=progress, data=data)

    monkeypatch.setattr(cmp, "train", counted)
    return calls


def grid(phantom, out, methods=("mt", "sup"), iterations=2):
    return compare(
        list(methods),
        [2],
        [0],
        "acdc",
        phantom,
        out,
        preset="small",
        iterations=iterations,
        device="cpu",
        **TINY,
    )


def test_tiny_grid_writes_table1_and_a_second_call_trains_nothing(phantom, tmp_path, count_training):
    rows = grid(phantom, tmp_path)
    assert [r["tag"] for r in rows] == ["sup", "mt"] and {r["status"] for r in rows} == {
        "new"
    }  # the paper's order
    assert sorted(name for name, _ in count_training) == ["acdc-mt-l2-s0", "acdc-sup-l2-s0"]
    for f in ("table1.md", "table1.csv", "table1.png", "table1_runs.csv", "table1.json"):
        assert (tmp_path / f).is_file(), f
    md = (tmp_path / "table1.md").read_text()
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert lines[0].startswith("| Method | Dice 3D [%] 2 patients (") and "Dice 2D [%]" in lines[0]
    assert [l.split("|")[1].strip() for l in lines[2:]] == ["-", "MT"]
    with open(tmp_path / "table1.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["Method"] for r in table] == ["-", "MT"] and abs(
        float(table[1]["dice_l2"]) - 100 * rows[1]["best_dice"]
    ) < 1e-3
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.json")}
    again = grid(phantom, tmp_path)
    assert len(count_training) == 2, count_training  # nothing trained the second time
    assert {r["status"] for r in again} == {"done"} and [r["best_dice"] for r in again] == [
        r["best_dice"] for r in rows
    ]
    assert stamp == {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/metrics.json")}


def test_half_finished_run_resumes_and_changed_config_is_retrained(phantom, tmp_path, count_training):
    settings = Grid([2], [0], "acdc", phantom, tmp_path, "small", 4, "cpu", overrides=TINY)
    cfg = run_config(RunSpec("mt", "mt"), 2, 0, settings)
    Trainer(cfg).fit(progress=False, stop_after=2)  # interrupted after 2 of 4 iterations
    assert run_status(cfg) == "resume"
    rows = grid(phantom, tmp_path, methods=("mt",), iterations=4)
    assert rows[0]["status"] == "resume" and count_training == [("acdc-mt-l2-s0", True)]
    with open(Path(cfg.out) / "log.csv") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]
    assert json.loads((Path(cfg.out) / "metrics.json").read_text())["iterations"] == 4
    assert run_status(cfg) == "done" and run_status(cfg.replace(num_workers=1)) == "done"
    # the same folder asked with another configuration: trained again from the start, old metrics gone first
    assert run_status(cfg.replace(iterations=3)) == "new"
    rows = grid(phantom, tmp_path, methods=("mt",), iterations=3)
    assert rows[0]["status"] == "new" and count_training[-1] == ("acdc-mt-l2-s0", False)
    assert json.loads((Path(cfg.out) / "metrics.json").read_text())["iterations"] == 3


def test_tables_2_and_3_have_the_papers_rows(phantom, tmp_path, monkeypatch):
    "Tables 2 and 3 from fake finished runs (the training itself is what the tests above check)."
    asked = []

    def fake_run(cfg, progress=False):
        asked.append(cfg)
        return {
            "run": cfg.out,
            "dataset": cfg.dataset,
            "method": cfg.method,
            "preset": cfg.preset,
            "labeled": cfg.labeled,
            "seed": cfg.seed,
            "iterations": cfg.iterations,
            "best_dice": 0.5 + 0.01 * cfg.seed,
            "best_jaccard": 0.4,
            "status": "done",
            "seconds": 0.0,
        }

    monkeypatch.setattr(cmp, "ensure_run", fake_run)
    ablation([2], [0, 1], "acdc", phantom, tmp_path, preset="small", iterations=10, device="cpu")
    assert len(asked) == 14 and {
        (c.use_con, c.use_rot, c.contrast) for c in asked if c.method == "ucpcl"
    } == {
        (True, False, "none"),
        (False, True, "none"),
        (True, True, "none"),
        (True, True, "labeled"),
        (True, True, "pseudo"),
        (True, True, "uncertainty"),
    }
    md = (tmp_path / "table2.md").read_text()
    body = [l for l in md.splitlines() if l.startswith("|")][2:]
    assert (
        len(body) == 7 and [l.count("✓") for l in body] == [0, 1, 1, 2, 3, 4, 4] and "50.50 ± 0.71" in body[0]
    )
    asked.clear()
    feature_levels(
        [2], [0], "acdc", phantom, tmp_path, preset="small", iterations=10, device="cpu", img_size=64
    )
    assert [c.contrast_level for c in asked] == [1, 2, 3, 4] and Path(
        asked[1].out
    ).name == "acdc-ucpcl-l2-s0"  # Conv2 = Table 1's run
    md = (tmp_path / "table3.md").read_text()
    assert "| Conv1 | 16×16 |" in md and "| Conv4 | 2×2 |" in md
    for t in ("table2", "table3"):
        assert (tmp_path / f"{t}.png").is_file() and (tmp_path / f"{t}.csv").is_file()
    assert [s.tag for s in FEATURE_ROWS] == ["ucpcl-conv1", "ucpcl", "ucpcl-conv3", "ucpcl-conv4"]
    assert ablation_marks(ABLATION_ROWS[-1]) == {
        "l_con": "✓",
        "l_e": "✓",
        "l_c^sup": "✓",
        "l_c^pseudo": "",
        "l_c": "✓",
    }


def test_cli_compare_prints_the_table_and_reports_errors(phantom, tmp_path, capsys):
    args = [
        "compare",
        "--methods",
        "sup",
        "--labeled",
        "2",
        "--seeds",
        "0",
        "--data-root",
        str(phantom),
        "--preset",
        "small",
        "--iterations",
        "1",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--quiet",
        "--set",
        "img_size=32",
        "batch_size=4",
        "labeled_bs=2",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/1] acdc-sup-l2-s0: new" in out and "| Method |" in out and "| - |" in out
    assert main(args) == 0 and "[1/1] acdc-sup-l2-s0: done" in capsys.readouterr().out
    assert main([*args[:2], "nope", *args[3:]]) == 2 and "unknown method 'nope'" in capsys.readouterr().err
