"""The benchmark scripts in bench/ keep working from a clone: each runs at tiny sizes and prints its table
(the figures are not checked: they depend on the machine). bench/contrast.py has its own tests in
test_contrast_bench.py."""

import os, subprocess, sys

import pytest
import torch
from nbrun import ROOT

pytestmark = pytest.mark.slow


def _bench(script: str, *args: str, tmp) -> str:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert r.returncode == 0, f"bench/{script} failed:\n{r.stderr[-3000:]}"
    assert not [
        p for p in tmp.iterdir() if p.name.startswith("ucpcl-bench-") and p.name != "ucpcl-bench-phantom"
    ], "a bench script left its scratch folder behind"
    return r.stdout


def test_train_step_splits_a_step_into_its_parts(tmp_path):
    out = _bench(
        "train_step.py",
        "--presets",
        "small",
        "--batch",
        "4",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--top",
        "5",
        tmp=tmp_path,
    )
    assert "| forward | contrast | backward | optimizer | GPU busy | data/batch | contrast share |" in out
    assert "| small | cpu | fp32 |" in out and "min / 6000 it" in out
    row = next(line for line in out.splitlines() if line.startswith("| small | cpu"))
    assert row.split(" | ")[9] == "n/a"  # no GPU: no GPU busy time
    assert "Self CPU time total" in out  # --top: the profiler's table of the costliest operators


def test_model_step_counts_parameters_and_times_a_step(tmp_path):
    out = _bench(
        "model_step.py", "--presets", "small", "--batch", "2", "--steps", "1", "--no-cuda", tmp=tmp_path
    )
    assert "| small | cpu | fp32 | 14,521,510 | 2x96^2 |" in out


def test_pipeline_measures_both_formats(tmp_path):
    out = _bench("pipeline.py", "--workers", "0", "--batches", "1", "--size", "64", tmp=tmp_path)
    assert "| ACDC slices 256x216 (h5) | 0 |" in out and "| ISIC 1024x768 (JPEG+PNG) | 0 |" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script would run for real")
@pytest.mark.parametrize("python", ["make env", "PYTHON given"])
def test_the_gpu_script_says_it_needs_a_gpu(python):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("PYTHON", None)
    if python == "PYTHON given":  # a machine with PyTorch and no package index: ucpcl from the checkout
        env["PYTHON"] = sys.executable
    elif not (ROOT / ".venv" / ".ucpcl-installed").exists():
        pytest.skip("environment not created by make")
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "1", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode != 0 and "no CUDA device: bench/gpu.sh needs a GPU" in r.stderr


def test_decoder_parts_races_each_part_against_its_layers(tmp_path):
    out = _bench("decoder_parts.py", "--batch", "1", "--rounds", "1", tmp=tmp_path)
    assert out.count("| up_conv |") == 5 and out.count("| fused_mlp |") == 3
