"""`ucpcl predict` and `ucpcl export`: outputs on the input's grid and in its format, the uncertainty of
Eq. 6, exported networks equal to PyTorch's, and one clear line for every bad input."""

import math, time

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import subdir
from ucpcl.cli import main
from ucpcl.phantoms import write_phantom
from ucpcl.predict import (
    compare_exported,
    export_network,
    load_exported,
    load_run,
    predict,
    read_uncertainty_png,
    read_volume,
    run_model_config,
    segment,
)
from ucpcl.train import CHECKPOINT_FORMAT, TrainConfig, atomic_save, get_method

SIZE = 32  # the network's input side in these tests (a multiple of 32)


def make_run(folder, dataset="acdc", method="ucpcl", preset="small", img_size=SIZE, seed=0, last=True):
    "A run folder as `ucpcl train` leaves it (config.json, best.pt, last.pt), with untrained seeded weights."
    fields = dict(dataset=dataset, method=method, preset=preset, img_size=img_size, seed=seed)
    cfg = TrainConfig(**fields, out=str(folder))
    torch.manual_seed(seed)
    m = get_method(method)(cfg, run_model_config(cfg))
    cfg.save(folder / "config.json")
    for name in ("best.pt", "last.pt") if last else ("best.pt",):
        ck = {"method": m.state_dict(), "config": cfg.to_dict(), "iteration": 0, "format": CHECKPOINT_FORMAT}
        atomic_save(ck, folder / name)
    return folder


@pytest.fixture(scope="module")
def acdc_run(module_tmp):
    return make_run(subdir(module_tmp, "acdc_run"))


@pytest.fixture(scope="module")
def isic_run(module_tmp):
    return make_run(subdir(module_tmp, "isic_run"), dataset="isic")


@pytest.fixture(scope="module")
def cardiac(module_tmp):
    "The cardiac phantom's first test volume (D, H, W) in [0, 1] and its spacing (z, y, x)."
    import h5py

    root = write_phantom("cardiac", subdir(module_tmp, "cardiac"), num_patients=(1, 1, 1), size=48)
    name = (root / "test.list").read_text().split()[0]
    with h5py.File(root / "data" / f"{name}.h5") as f:
        return f["image"][:], f["spacing"][:]


@pytest.fixture(scope="module")
def lesions(module_tmp):
    "Two JPEG images of the lesion phantom (ISIC layout)."
    root = write_phantom("lesion", subdir(module_tmp, "lesion"), num_images=2, sizes=(40, 56))
    return sorted(root.rglob("*.jpg"))


def oblique_affine():
    "A voxel-to-world matrix with a rotation, anisotropic voxels (1.6, 1.4, 10 mm) and an origin away from 0."
    c, s = math.cos(0.3), math.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([1.6, 1.4, 10.0])
    a[:3, 3] = (-80, -60, 30)
    return a


def one_line_error(argv, capsys) -> str:
    "Run the command, which must fail with exit status 2 and one line on stderr; return that line."
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"ucpcl {argv[0]}: error: "), err
    return err


def test_nifti_outputs_keep_the_inputs_grid(acdc_run, cardiac, tmp_path):
    vol, _ = cardiac
    scan = (vol * 900 + 50).astype(np.int16).transpose(2, 1, 0)  # (x, y, z)
    src = nib.Nifti1Image(scan, oblique_affine())
    src.header.set_xyzt_units("mm", "sec")
    nib.save(src, tmp_path / "heart.nii.gz")
    nib.save(nib.Nifti1Image(scan[:, :, 2], oblique_affine()), tmp_path / "one_slice.nii")  # a 2D image
    records = predict(acdc_run, tmp_path, tmp_path / "out")
    assert [r["shape"][0] for r in records] == [len(vol), 1]
    model = load_run(acdc_run)
    for name, ext in (("heart", ".nii.gz"), ("one_slice", ".nii")):
        ref = nib.load(tmp_path / f"{name}{ext}")
        lab = nib.load(tmp_path / "out" / f"{name}_label.nii.gz")
        unc = nib.load(tmp_path / "out" / f"{name}_uncertainty.nii.gz")
        for im in (lab, unc):
            np.testing.assert_array_equal(im.affine, ref.affine)
            assert im.shape == ref.shape and im.header.get_zooms() == ref.header.get_zooms()
            assert im.header.get_xyzt_units() == ref.header.get_xyzt_units()
            assert int(im.header["sform_code"]) == int(ref.header["sform_code"])
        assert lab.get_data_dtype() == np.uint8 and unc.get_data_dtype() == np.float32
        slices = torch.from_numpy(read_volume(tmp_path / f"{name}{ext}")[0])[:, None]
        labels, u = segment(model.net, slices)
        to_slices = lambda a: np.asarray(a.dataobj).reshape(ref.shape[:2] + (-1,)).transpose(2, 1, 0)
        np.testing.assert_array_equal(to_slices(lab), labels.numpy())
        np.testing.assert_array_equal(to_slices(unc), u.numpy())
        assert 0 <= u.min() and u.max() <= math.log(4) + 1e-6
        assert (tmp_path / "out" / f"{name}_overlay.png").stat().st_size > 1000


def test_uncertainty_is_eq6_of_the_two_decoders_mean(acdc_run):
    "At the network's own size nothing is resized: u is -sum p log(p + eps) of (p_c + p_t) / 2, written out."
    net = load_run(acdc_run).net
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    labels, u = segment(net, x)
    with torch.no_grad():
        feats = net.encode(x)
        logits_c = net.decode_cnn(feats)
        p_hat = (logits_c.softmax(1) + net.decode_transformer(feats).softmax(1)) / 2
    expected = -(p_hat * torch.log(p_hat + 1e-6)).sum(1)
    torch.testing.assert_close(u, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(labels, logits_c.argmax(1))


def test_a_baseline_run_has_the_cnn_decoders_entropy(tmp_path, cardiac):
    run = make_run(tmp_path / "sup", method="sup")
    model = load_run(run)
    assert not model.two_decoders
    x = torch.from_numpy(cardiac[0][:2, None]).float()
    _, u = segment(model.net, F.interpolate(x, size=(SIZE, SIZE), mode="bilinear"))
    with torch.no_grad():
        z = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear")
        p_c = model.net.decode_cnn(model.net.encode(z)).softmax(1)
    torch.testing.assert_close(u, -(p_c * torch.log(p_c + 1e-6)).sum(1), atol=1e-6, rtol=1e-5)
    Image.fromarray((cardiac[0][0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    (r,) = predict(run, tmp_path / "s.png", tmp_path / "out")
    assert r["uncertainty"] == "CNN decoder alone"


def test_pictures_give_png_labels_and_16_bit_uncertainty(isic_run, lesions, tmp_path, capsys):
    for p in lesions:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "in" / "notes.txt").write_text("not an image: skipped in a folder")
    argv = ["predict", "--run", str(isic_run), "--input", str(tmp_path / "in"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert all(p.name in printed for p in lesions) and "mean of the CNN and Transformer decoders" in printed
    model = load_run(isic_run)
    for p in lesions:
        with Image.open(p) as im:
            rgb = np.asarray(im.convert("RGB"))
        x = torch.from_numpy(rgb.transpose(2, 0, 1) / 255).float()[None]
        labels, u = segment(model.net, x)
        with Image.open(tmp_path / "o" / f"{p.stem}_label.png") as im:
            assert im.mode == "L" and im.size == (rgb.shape[1], rgb.shape[0])
            np.testing.assert_array_equal(np.asarray(im), labels[0].numpy())
        back = read_uncertainty_png(tmp_path / "o" / f"{p.stem}_uncertainty.png")
        step = math.log(2) / 65535  # the scale: ln C at the top of 16 bits
        assert np.abs(back - u[0].numpy()).max() <= step / 2 + 1e-7
        with Image.open(tmp_path / "o" / f"{p.stem}_overlay.png") as im:
            assert im.format == "PNG"
    assert sorted(f.name for f in (tmp_path / "o").iterdir()) == sorted(
        f"{p.stem}_{kind}.png" for p in lesions for kind in ("label", "uncertainty", "overlay")
    )


def test_outputs_are_never_replaced_silently(acdc_run, cardiac, tmp_path, capsys):
    Image.fromarray((cardiac[0][0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    args = [
        "predict",
        "--run",
        str(acdc_run),
        "--input",
        str(tmp_path / "s.png"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0
    before = (tmp_path / "o" / "s_label.png").stat().st_mtime_ns
    err = one_line_error(args, capsys)
    assert "s_label.png and 2 more exist already: pass --overwrite" in err
    assert (tmp_path / "o" / "s_label.png").stat().st_mtime_ns == before
    time.sleep(0.01)
    assert main(args + ["--overwrite", "--checkpoint", "last"]) == 0
    assert (tmp_path / "o" / "s_label.png").stat().st_mtime_ns > before


def _bad_inputs(d, cardiac):
    "Files that `predict` must refuse, each with the words its error must contain."
    vol = cardiac[0]
    scan = (vol * 900).astype(np.int16).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(scan, np.eye(4)), d / "good.nii.gz")
    (d / "truncated.nii.gz").write_bytes((d / "good.nii.gz").read_bytes()[:400])
    nan = scan.astype(np.float32)
    nan[0, 0, 0], nan[1, 0, 0] = np.nan, np.inf
    nib.save(nib.Nifti1Image(nan, np.eye(4)), d / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3, 2), np.float32), np.eye(4)), d / "series.nii.gz")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "rgb.png")
    Image.fromarray(np.zeros((16, 16, 4), np.uint8)).save(d / "rgba.png")
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(d / "photo.jpg", quality=90)
    (d / "cut.jpg").write_bytes((d / "photo.jpg").read_bytes()[:200])
    (d / "scan.dcm").write_bytes(b"DICM")
    return {
        "truncated.nii.gz": "truncated.nii.gz: cannot be read as NIfTI",
        "nan.nii.gz": "nan.nii.gz: 2 voxels are NaN or infinite: replace them",
        "series.nii.gz": "save each frame of a series as its own file",
        "rgb.png": "rgb.png: 3 channel(s) (mode RGB), but the run's network takes 1: save it as grey",
        "rgba.png": "rgba.png: 4 channel(s) (mode RGBA), but the run's network takes 1",
        "cut.jpg": "cut.jpg: cannot be decoded as an image",
        "scan.dcm": "scan.dcm: unsupported file type '.dcm': give a .nii/.nii.gz volume or a .png/.jpg/.jpeg",
    }


def test_every_bad_input_is_one_clear_line(acdc_run, cardiac, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, words in _bad_inputs(bad, cardiac).items():
        argv = ["predict", "--run", str(acdc_run), "--input", str(bad / name), "--out", str(tmp_path / "o")]
        assert words in one_line_error(argv, capsys), name
    assert not (tmp_path / "o").exists(), "nothing is written for a bad input"


def test_a_bad_file_in_a_folder_stops_before_anything_is_written(acdc_run, cardiac, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _bad_inputs(tmp_path, cardiac)
    for name in ("good.nii.gz", "truncated.nii.gz"):
        (d / name).write_bytes((tmp_path / name).read_bytes())
    argv = ["predict", "--run", str(acdc_run), "--input", str(d), "--out", str(tmp_path / "o")]
    assert "truncated.nii.gz: cannot be read as NIfTI" in one_line_error(argv, capsys)
    assert not (tmp_path / "o").exists()


def test_runs_and_outputs_that_cannot_work(acdc_run, isic_run, cardiac, tmp_path, capsys):
    Image.fromarray((cardiac[0][0] * 255).astype(np.uint8)).save(tmp_path / "s.png")
    inp = ["--input", str(tmp_path / "s.png")]
    run = lambda r: ["predict", "--run", str(r), *inp]
    out = ["--out", str(tmp_path / "o")]
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    only_last = tmp_path / "only_last"
    only_last.mkdir()
    for f in ("config.json", "last.pt"):
        (only_last / f).write_bytes((acdc_run / f).read_bytes())
    cases = [
        (run(tmp_path / "nowhere") + out, "is not a run folder (no config.json)"),
        (run(isic_run) + out, "s.png: 1 channel(s) (mode L), but the run's network takes 3"),
        (run(acdc_run) + ["--out", str(tmp_path / "s.png")], "is a file: give a folder"),
        (run(acdc_run) + ["--out", str(tmp_path / "s.png" / "sub")], "is not writable"),
        (run(acdc_run) + out + ["--checkpoint", str(tmp_path / "x.pt")], "x.pt: train the run first"),
        (run(only_last) + out, "best.pt: " + str(only_last / "last.pt") + " exists: use --checkpoint last"),
        (run(acdc_run) + out + ["--checkpoint", str(tmp_path / "garbage.pt")], "garbage.pt is unreadable"),
    ]
    for argv, words in cases:
        assert words in one_line_error(argv, capsys), argv
    (tmp_path / "s.jpg").write_bytes((tmp_path / "s.png").read_bytes())
    folder = ["predict", "--run", str(acdc_run), "--input", str(tmp_path)] + out
    assert "s.jpg and s.png would write the same outputs" in one_line_error(folder, capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    folder = ["predict", "--run", str(acdc_run), "--input", str(empty)] + out
    assert "is a folder without a .nii, .nii.gz, .png, .jpg or .jpeg file" in one_line_error(folder, capsys)
    assert not (tmp_path / "o").exists()


# --- export -------------------------------------------------------------------------------------


def _phantom_batch(cardiac, channels: int, size: int) -> torch.Tensor:
    x = torch.from_numpy(cardiac[0][:4, None]).float().repeat(1, channels, 1, 1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_network_equals_pytorch(fmt, acdc_run, cardiac, tmp_path):
    if fmt == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module, reason=f"{module} is not installed (pip install 'ucpcl[export]')")
    net = load_run(acdc_run).net
    path = export_network(net, fmt, tmp_path / f"net{'.pt' if fmt == 'torchscript' else '.onnx'}")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "one self-contained file (no .data beside it)"
    inputs = {
        "random": torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2)),
        "phantom": _phantom_batch(cardiac, 1, SIZE),
        "one image": torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3)),
    }
    for name, x in inputs.items():
        r = compare_exported(path, net, x)
        assert r["max_abs_diff"] <= 1e-4 and r["same_argmax"], (fmt, name, r)


def test_paper_preset_torchscript_equals_pytorch(cardiac, tmp_path):
    # best.pt only: a paper-preset checkpoint is 0.16 GB
    run = make_run(tmp_path / "paper", dataset="isic", preset="paper", img_size=224, last=False)
    net = load_run(run).net
    path = export_network(net, "torchscript", tmp_path / "paper.pt")
    random = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    for x in (random, _phantom_batch(cardiac, 3, 224)[:2]):
        r = compare_exported(path, net, x)
        assert r["max_abs_diff"] <= 1e-4 and r["same_argmax"], r


def test_export_command(acdc_run, tmp_path, capsys):
    out = tmp_path / "net.pt"
    assert main(["export", "--run", str(acdc_run), "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "same labels: True" in printed
    assert load_exported(out)(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 4, SIZE, SIZE)  # TorchScript
    again = ["export", "--run", str(acdc_run), "--format", "torchscript", "--out", str(out)]
    assert "exists already: pass --overwrite" in one_line_error(again, capsys)
    assert main(again + ["--overwrite"]) == 0
    assert "is a folder: give a file name" in one_line_error(again[:-1] + [str(tmp_path)], capsys)
