"""Runs that a careful user cannot break (issue 15): safe checkpoints, no silent overwrite, every split
checked before the first step, no reads outside the data root, one-line errors, three disjoint ISIC splits."""

import errno, json, os, subprocess, sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from ucpcl.cli import main
from ucpcl.data import ACDCSlices, ACDCVolumes, DataError, acdc_splits, convert_acdc, isic_split
from ucpcl.data import read_manifest, toy_acdc_release
from ucpcl.phantoms import write_phantom
from ucpcl.train import TrainConfig, Trainer, atomic_save, read_checkpoint

from test_data import lines, make_acdc, make_isic

BIN = Path(sys.executable).parent
TINY = dict(preset="small", img_size=32, batch_size=4, labeled_bs=2, labeled=2, iterations=2, method="sup")
TINY |= dict(eval_every=2, save_every=2, log_every=1)
# the same run as `ucpcl train` options
ARGS = ["--preset", "small", "--iterations", "2", "--labeled", "2", "--method", "sup", "--quiet"]
ARGS += ["--set", "img_size=32", "batch_size=4", "labeled_bs=2", "eval_every=2", "save_every=2"]


@pytest.fixture(scope="module")
def phantom(module_tmp):
    return write_phantom("cardiac", module_tmp / "data" / "cardiac", num_patients=(3, 1, 1))


def cfg(root, out, **kw) -> TrainConfig:
    return TrainConfig(data_root=str(root), out=str(out), **{**TINY, **kw})


def train_cli(root, out, *extra, sets=()) -> int:
    "`ucpcl train` of the tiny run, with more options and more --set values."
    return main(["train", "--data-root", str(root), "--out", str(out), *ARGS[:-6], *extra, *ARGS[-6:], *sets])


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"ucpcl {command}: error:") and err.count("\n") == 1 and "Traceback" not in err
    return err


def snapshot(folder: Path) -> dict:
    "Every file under `folder` with its bytes: what a command must leave unchanged."
    return {p: p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. checkpoints cannot run code


class Payload:
    "Unpickling this runs a shell command: what a crafted checkpoint does."

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_is_refused_without_running_code(phantom, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "code-ran"
    run.mkdir()
    cfg(phantom, run).save(run / "config.json")
    torch.save({"method": {}, "iteration": 0, "x": Payload(marker)}, run / "last.pt")
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(run / "last.pt", torch.device("cpu"))
    assert main(["evaluate", "--run", str(run), "--checkpoint", "last", "--device", "cpu"]) == 2
    assert "refused" in one_line_error(capsys, "evaluate") and not marker.exists()


def test_checkpoints_load_as_weights_only_and_resume(phantom, tmp_path):
    "last.pt (its RNG states included) loads with weights_only=True, and resuming from it works."
    Trainer(cfg(phantom, tmp_path, iterations=3, save_every=1)).fit(progress=False, stop_after=1)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ck["iteration"] == 1 and set(ck["rng"]) >= {"torch", "numpy", "python"}
    assert Trainer(cfg(phantom, tmp_path, iterations=3)).fit(resume=True, progress=False).iteration == 3


# ---------------------------------------------------------------- 2. no silent overwrite


def test_an_existing_run_is_kept_unless_resumed_or_overwritten(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(phantom, run) == 0
    capsys.readouterr()
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    assert train_cli(phantom, run, "--lr", "0.02") == 2  # another run into the same folder
    err = one_line_error(capsys, "train")
    assert "--resume" in err and "--overwrite" in err and snapshot(run) == before
    assert train_cli(phantom, run, "--lr", "0.02", "--overwrite") == 0
    assert (run / "notes.txt").read_text() == "mine" and json.loads((run / "config.json").read_text())[
        "lr"
    ] == 0.02


def test_the_demo_runs_again_into_its_own_folder(tmp_path):
    "The demo's run folders are its own: a second `make demo` replaces them instead of stopping."
    from ucpcl.report import demo

    kw = dict(preset="small", img_size=32, batch_size=4, labeled_bs=2)
    for _ in range(2):
        demo(tmp_path, iterations=2, methods=("sup",), progress=False, **kw)
    assert (tmp_path / "runs" / "sup-seed0" / "metrics.json").is_file()


def test_a_folder_that_is_not_a_run_loses_nothing(phantom, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("log.csv", "val.csv", "data.txt"):
        (mine / name).write_text("a user's file\n")
    before = snapshot(mine)
    for extra in ((), ("--overwrite",)):
        assert train_cli(phantom, mine, *extra) == 2
        assert "not a ucpcl run" in one_line_error(capsys, "train") and snapshot(mine) == before


# ---------------------------------------------------------------- 3. every split checked before training


@pytest.fixture
def acdc(tmp_path):
    return make_acdc(tmp_path / "ACDC", hw=(16, 16))


def never_step(monkeypatch):
    steps = []
    monkeypatch.setattr(Trainer, "step", lambda self, batch, it: steps.append(it))
    return steps


def test_empty_validation_or_test_list_is_refused_before_training(acdc, tmp_path, monkeypatch):
    steps = never_step(monkeypatch)
    for split in ("val", "test"):
        lines(acdc / f"{split}.list", [])
        with pytest.raises(DataError, match=rf"{split}\.list.*empty"):
            Trainer(cfg(acdc, tmp_path / split, labeled=1)).fit(progress=False)
        lines(acdc / f"{split}.list", ["patient004_frame01"] if split == "val" else ["patient005_frame01"])
    assert steps == [] and not any(tmp_path.glob("*/last.pt"))


def test_a_broken_test_volume_is_found_before_the_first_step(acdc, tmp_path, monkeypatch):
    steps = never_step(monkeypatch)
    bad = acdc / "data" / "patient005_frame02.h5"
    with h5py.File(bad, "r+") as f:
        f["label"][0, 0, 0] = 7
    with pytest.raises(DataError, match=r"patient005_frame02\.h5: label values span 0\.\.7"):
        Trainer(cfg(acdc, tmp_path / "run", labeled=1)).fit(progress=False)
    assert steps == []


def test_the_checkpoint_is_saved_before_validating(phantom, tmp_path, monkeypatch):
    def broken(self, it):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(Trainer, "validate", broken)
    with pytest.raises(RuntimeError, match="validation failed"):
        Trainer(cfg(phantom, tmp_path, iterations=4)).fit(progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["iteration"] == 2
    monkeypatch.undo()  # resuming validates iteration 2 first, then goes on
    Trainer(cfg(phantom, tmp_path, iterations=4)).fit(resume=True, progress=False)
    assert [r.split(",")[0] for r in (tmp_path / "val.csv").read_text().splitlines()[1:]] == ["2", "4"]


# ---------------------------------------------------------------- 4. non-finite images


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_images_are_refused_naming_the_file(acdc, tmp_path, value):
    name = acdc_splits(acdc)["train_slices"][4]
    path = acdc / "data" / "slices" / f"{name}.h5"
    with h5py.File(path, "r+") as f:
        f["image"][1, 2] = value
    with pytest.raises(DataError, match=rf"{name}\.h5: image has 1 non-finite value"):
        ACDCSlices(acdc, verify=False)[4]
    vol = acdc / "data" / "patient005_frame01.h5"
    with h5py.File(vol, "r+") as f:
        f["image"][0, 0, 0] = value
    with pytest.raises(DataError, match=r"patient005_frame01\.h5: image has 1 non-finite value"):
        ACDCVolumes(acdc, "test", verify=False)[0]


def test_non_finite_nifti_is_refused_by_the_conversion(tmp_path):
    raw = toy_acdc_release(tmp_path / "raw", patients=3)
    path = raw / "training" / "patient002" / "patient002_frame01.nii.gz"
    img = nib.load(path)
    x = np.asarray(img.dataobj, np.float32)
    x[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(x, img.affine), path)
    with pytest.raises(DataError, match=r"patient002_frame01\.nii\.gz: image has 1 non-finite value"):
        convert_acdc(raw, tmp_path / "out")


# ---------------------------------------------------------------- 5. list entries stay inside the root


@pytest.mark.parametrize("entry", ["../../../outside", "/etc/hostname", "sub/../../../../outside"])
def test_list_entries_outside_the_root_are_refused(acdc, tmp_path, entry):
    # a readable slice file outside the data root
    np_img = np.zeros((16, 16), np.float32)
    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f.create_dataset("image", data=np_img)
        f.create_dataset("label", data=np_img.astype(np.uint8))
    names = acdc_splits(acdc)["train_slices"]
    lines(acdc / "train_slices.list", [entry] + names)
    with pytest.raises(DataError, match=r"train_slices\.list: .*not a file name"):
        ACDCSlices(acdc, verify=False)


# ---------------------------------------------------------------- 6 and issue 16 A. ISIC splits


def test_isic_splits_are_three_disjoint_seeded_and_never_written_to_the_root(tmp_path):
    root = make_isic(tmp_path / "ISIC", n=20, no_mask=(19,))
    before = snapshot(root)
    sp = isic_split(root, seed=3, labeled=0.5)
    # 19 images with masks: 6 held out (ceil 5.7), 2 for validation and 4 for testing; 13 train, 6 labeled
    assert [len(sp[k]) for k in ("train", "val", "test", "labeled", "unlabeled")] == [13, 2, 4, 6, 8]
    groups = [set(sp[k]) for k in ("train", "val", "test")]
    assert all(not (a & b) for i, a in enumerate(groups) for b in groups[i + 1 :])
    assert isic_split(root, seed=3, labeled=0.5) == sp and isic_split(root, seed=4)["test"] != sp["test"]
    d = tmp_path / "run" / "splits"
    assert isic_split(root, seed=3, labeled=0.5, splits_dir=d) == sp
    rec = json.loads((d / "split.json").read_text())
    assert rec["seed"] == 3 and rec["counts"] == {
        "train": 13,
        "val": 2,
        "test": 4,
        "labeled": 6,
        "unlabeled": 8,
    }
    assert read_names(d / "test.txt") == sp["test"] and snapshot(root) == before
    lines(d / "test.txt", sp["test"] + sp["val"][:1])
    with pytest.raises(DataError, match=r"in both val and test"):
        isic_split(root, seed=3, labeled=0.5, splits_dir=d)


def read_names(path: Path) -> list[str]:
    return path.read_text().split()


def test_isic_run_writes_its_splits_to_the_run_folder_and_evaluates_from_elsewhere(
    tmp_path, monkeypatch, capsys
):
    root = make_isic(tmp_path / "data" / "ISIC", n=16)
    before = snapshot(root)
    monkeypatch.chdir(tmp_path / "data")  # a relative --data-root
    run = tmp_path / "run"
    assert main(["train", "--dataset", "isic", "--data-root", "ISIC", "--out", str(run), *ARGS]) == 0
    assert snapshot(root) == before  # nothing written into the data root
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_root"] == str(root) and (run / "splits" / "split.json").is_file()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--checkpoint", "last", "--device", "cpu"]) == 0
    assert json.loads((run / "eval_test_last.json").read_text())["summary"]["n_cases"] == 3


# ---------------------------------------------------------------- 7. one-line errors instead of tracebacks


def test_out_at_a_file_or_a_read_only_place(phantom, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert train_cli(phantom, tmp_path / "file") == 2
    assert f"{tmp_path / 'file'}" in one_line_error(capsys, "train")
    assert train_cli(phantom, tmp_path / "file" / "run") == 2
    assert "file" in one_line_error(capsys, "train")

    def refuse(self, *a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert train_cli(phantom, tmp_path / "ro" / "run") == 2
    err = one_line_error(capsys, "train")
    assert "Permission denied" in err and "ro" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "eval_every=0"], "eval_every=0 is invalid"),
        (["--save-every", "0"], "save_every=0 is invalid"),
        (["--set", "log_every=-1"], "log_every=-1 is invalid"),
    ],
)
def test_zero_intervals_are_refused(phantom, tmp_path, capsys, args, message):
    assert main(["train", "--data-root", str(phantom), "--out", str(tmp_path / "r"), *args]) == 2
    assert message in one_line_error(capsys, "train")


def test_set_of_a_field_the_command_sets_itself(phantom, tmp_path, capsys):
    base = ["compare", "--data-root", str(phantom), "--out", str(tmp_path / "c")]
    for key in ("out", "method", "seed"):
        assert main([*base, "--set", f"{key}=1"]) == 2
        assert f"--set {key}" in one_line_error(capsys, "compare")


def test_disk_full_is_one_line_and_leaves_no_temporary_file(phantom, tmp_path, capsys, monkeypatch):
    def full(obj, f, *a, **kw):
        Path(f).write_bytes(b"\0" * 1000)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"last\.pt.*No space left on device"):
        atomic_save({"a": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
    assert train_cli(phantom, tmp_path / "run") == 2
    err = one_line_error(capsys, "train")
    assert "No space left on device" in err and str(tmp_path / "run") in err
    assert not list((tmp_path / "run").glob("*.tmp"))


# ---------------------------------------------------------------- 8. convert-acdc


def test_convert_acdc_reports_frames_without_masks(tmp_path, capsys):
    raw = toy_acdc_release(tmp_path / "raw", patients=4)
    (raw / "training" / "patient002" / "patient002_frame01_gt.nii.gz").unlink()
    for gt in (raw / "training" / "patient003").glob("*_gt.nii.gz"):
        gt.unlink()
    out = tmp_path / "acdc"
    assert main(["convert-acdc", str(raw), str(out)]) == 2
    err = one_line_error(capsys, "convert-acdc")
    assert "3 frame(s) without a _gt mask" in err and "patient003 has none" in err and not out.exists()
    assert main(["convert-acdc", str(raw), str(out), "--skip-unannotated"]) == 0
    assert "skipped 3 frame(s) without a _gt mask" in capsys.readouterr().out
    skipped = read_manifest(out)["skipped"]
    assert sorted(Path(p).name for p in skipped) == [
        "patient002_frame01.nii.gz",
        "patient003_frame01.nii.gz",
        "patient003_frame10.nii.gz",
    ]
    assert all("patient003" not in n for k in ("train", "val", "test") for n in acdc_splits(out)[k])


def test_convert_acdc_writes_its_output_atomically(tmp_path, capsys):
    raw = toy_acdc_release(tmp_path / "raw", patients=4)
    victim = raw / "training" / "patient004" / "patient004_frame11.nii.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a truncated download
    out = tmp_path / "acdc"
    assert main(["convert-acdc", str(raw), str(out)]) == 2
    assert "patient004_frame11.nii.gz" in one_line_error(capsys, "convert-acdc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no partial output, no temporary folder
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    toy_acdc_release(tmp_path / "raw2", patients=3)
    assert main(["convert-acdc", str(tmp_path / "raw2"), str(out)]) == 2
    assert "not empty" in one_line_error(capsys, "convert-acdc") and [p.name for p in out.iterdir()] == [
        "keep.txt"
    ]


# ---------------------------------------------------------------- 9. non-finite numbers


@pytest.mark.parametrize("value", ["lr=nan", "ema_decay=-inf", "tau=inf"])
def test_non_finite_numbers_are_refused(phantom, tmp_path, capsys, value):
    assert train_cli(phantom, tmp_path / "r", sets=[value]) == 2
    assert "finite" in one_line_error(capsys, "train") and not (tmp_path / "r").exists()
    assert train_cli(phantom, tmp_path / "r", "--lr", "inf") == 2  # an option, as --set
    assert "lr=inf is invalid: use a finite number" in one_line_error(capsys, "train")
    with pytest.raises(ValueError, match="lr=nan is invalid"):
        TrainConfig(lr=float("nan"))


# ---------------------------------------------------------------- 10. the console script and OpenMP


SPY = """
import os, runpy, sys
seen = []

class Spy:
    "Record OMP_WAIT_POLICY at the moment torch is first imported."

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "<unset>"))

sys.meta_path.insert(0, Spy())
sys.argv = ["ucpcl", "train", "--help"]
try:
    runpy.run_path(SCRIPT, run_name="__main__")
except SystemExit:
    pass
print(seen[0], os.environ.get("OMP_WAIT_POLICY", "<unset>"))
"""


@pytest.mark.parametrize("user, expected", [(None, "PASSIVE PASSIVE"), ("ACTIVE", "ACTIVE ACTIVE")])
def test_console_script_sets_omp_wait_policy_before_torch(user, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    code = f"SCRIPT = {str(BIN / 'ucpcl')!r}\n" + SPY
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[-2] == expected
