"bench/contrast.py keeps working: its functions run at tiny sizes (not timed) and catch a disagreement."

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(batch=2, dim=8, size=5, num_classes=3, memory_size=6, per_class=4, repeats=1)
PARTS = ["sampling", "InfoNCE", "sampling + InfoNCE", "sampling + InfoNCE + backward"]


def _bench():
    "Import bench/contrast.py by path (bench/ is a folder of scripts, not a package)."
    spec = importlib.util.spec_from_file_location("bench_contrast", ROOT / "bench" / "contrast.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_runs_at_tiny_sizes():
    rows = _bench().benchmark(**TINY)
    assert [r["part"] for r in rows] == PARTS
    for r in rows:
        assert r["vectorised_ms"] > 0 and r["loop_ms"] > 0
        assert r["ratio"] == pytest.approx(r["loop_ms"] / r["vectorised_ms"])
        assert r["anchors"] == 12  # 4 per class, 3 classes, 50 pixels of which about 3/4 are valid


def test_inputs_have_the_asked_shapes_and_a_full_queue():
    emb, labels, queue = _bench().make_inputs(batch=3, dim=16, size=7, num_classes=4, memory_size=5)
    assert emb.shape == (3, 16, 7, 7) and emb.requires_grad and labels.shape == (3, 7, 7)
    assert int(labels.min()) >= -1 and int(labels.max()) <= 3
    assert len(queue) == 20 and bool(queue.filled().all())


def test_main_prints_a_table(capsys):
    rows = _bench().main(
        [
            "--batch",
            "2",
            "--dim",
            "8",
            "--size",
            "5",
            "--num-classes",
            "3",
            "--memory-size",
            "6",
            "--per-class",
            "4",
            "--repeats",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert "vectorised ms" in out and "loop ms" in out and "ratio" in out and "M = 12" in out
    assert all(p in out for p in PARTS) and len(rows) == 4


def test_a_disagreement_between_the_versions_is_an_error(monkeypatch):
    mod = _bench()
    monkeypatch.setattr(mod, "pixel_info_nce_loop", lambda *a, **k: torch.tensor(123.0))
    with pytest.raises(RuntimeError, match="!= loop loss"):
        mod.benchmark(**TINY)


def test_main_leaves_the_thread_count_as_it_was():
    before = torch.get_num_threads()
    _bench().main(
        [
            "--batch",
            "1",
            "--dim",
            "4",
            "--size",
            "4",
            "--num-classes",
            "2",
            "--memory-size",
            "3",
            "--per-class",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
        ]
    )
    assert torch.get_num_threads() == before
