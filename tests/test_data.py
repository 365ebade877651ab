"""Data loading on small on-disk fixtures: ACDC layout and conversion, manifests, ISIC layouts and splits,
transforms, sampler."""

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ucpcl.data import (
    ACDC_PATIENTS_TO_SLICES,
    ACDCSlices,
    ACDCVolumes,
    DataError,
    ISICImages,
    TwoStreamBatchSampler,
    acdc_labeled_names,
    acdc_splits,
    build_data,
    convert_acdc,
    isic_index,
    isic_split,
    labeled_count,
    read_manifest,
    verify_manifest,
)
from ucpcl.transforms import eval_transform, train_transform


# ---------------------------------------------------------------- fixtures


def h5(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def lines(path: Path, names):
    path.write_text("".join(n + "\n" for n in names))


def make_acdc(
    root: Path,
    train=("patient003", "patient001", "patient002"),
    val=("patient004",),
    test=("patient005",),
    depth=3,
    hw=(12, 10),
    spacing=True,
) -> Path:
    "The preprocessed ACDC layout: two frames per patient, `depth` slices each, lists in the given order."
    rng = np.random.default_rng(0)
    vols = {}
    for p in (*train, *val, *test):
        for f in (1, 2):
            v = f"{p}_frame{f:02d}"
            img = rng.random((depth, *hw)).astype(np.float32)
            lbl = rng.integers(0, 4, (depth, *hw)).astype(np.uint8)
            h5(
                root / "data" / f"{v}.h5",
                image=img,
                label=lbl,
                **({"spacing": np.float32([10, 1.5, 1.25])} if spacing else {}),
            )
            for k in range(depth):
                h5(root / "data" / "slices" / f"{v}_slice_{k}.h5", image=img[k], label=lbl[k])
            vols[v] = (img, lbl)
    v_of = lambda ps: [f"{p}_frame{f:02d}" for p in ps for f in (1, 2)]
    lines(root / "train.list", v_of(train))
    lines(root / "val.list", v_of(val))
    lines(root / "test.list", v_of(test))
    lines(root / "train_slices.list", [f"{v}_slice_{k}" for v in v_of(train) for k in range(depth)])
    return root


@pytest.fixture
def acdc(tmp_path):
    return make_acdc(tmp_path / "ACDC")


def write_release(raw: Path, patients=4, shape=(4, 12, 10), zooms=(1.5, 1.25, 10.0), seed=0):
    "A synthetic ACDC challenge release; returns {(patient, frame): (image (D, H, W), mask (D, H, W))}."
    rng, out = np.random.default_rng(seed), {}
    for p in range(1, patients + 1):
        d = raw / "training" / f"patient{p:03d}"
        d.mkdir(parents=True)
        (d / "Info.cfg").write_text("ED: 1\n")
        for frame in (1, 12):
            img = rng.integers(-50, 900, shape).astype(np.int16)
            msk = rng.integers(0, 4, shape).astype(np.uint8)
            nib.save(
                nib.Nifti1Image(img.transpose(2, 1, 0), np.diag([*zooms, 1.0])),
                d / f"patient{p:03d}_frame{frame:02d}.nii.gz",
            )
            nib.save(
                nib.Nifti1Image(msk.transpose(2, 1, 0), np.diag([*zooms, 1.0])),
                d / f"patient{p:03d}_frame{frame:02d}_gt.nii.gz",
            )
            out[f"patient{p:03d}", frame] = (img, msk)
    return out


def make_isic(root: Path, n=10, official=True, no_mask=(), seed=0) -> Path:
    "ISIC images of varying size with binary masks, in the two official folders or in one folder."
    img_dir = root / "ISIC2018_Task1-2_Training_Input" if official else root
    msk_dir = root / "ISIC2018_Task1_Training_GroundTruth" if official else root
    img_dir.mkdir(parents=True, exist_ok=True)
    msk_dir.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        h, w = 20 + k, 24
        a = np.full((h, w, 3), 40, np.uint8)
        a[5:15, 6:18] = (220, 120, 80)
        Image.fromarray(a).save(img_dir / f"ISIC_{k:07d}.jpg", quality=95)
        if k not in no_mask:
            mask = (a[..., 0] > 100).astype(np.uint8) * 255
            Image.fromarray(mask).save(msk_dir / f"ISIC_{k:07d}_segmentation.png")
    (img_dir / "LICENSE.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------- ACDC layout


def test_acdc_slices_and_volumes_read_the_layout(acdc):
    ds = ACDCSlices(acdc)
    assert len(ds) == 18 and ds.names[0] == "patient003_frame01_slice_0"
    it = ds[4]
    with h5py.File(acdc / "data" / "slices" / f"{it['name']}.h5") as f:
        img, lbl = f["image"][()], f["label"][()]
    assert it["image"].shape == (1, 12, 10) and it["image"].dtype == torch.float32 and it["has_label"] is True
    assert torch.equal(it["image"][0], torch.from_numpy(img)) and torch.equal(
        it["label"], torch.from_numpy(lbl).long()
    )
    off = ACDCSlices(acdc, with_labels=False)[4]
    assert off["has_label"] is False and (off["label"] == -1).all() and torch.equal(off["image"], it["image"])
    vs = ACDCVolumes(acdc, "test")
    assert vs.names == ["patient005_frame01", "patient005_frame02"]
    v = vs[1]
    assert v["image"].shape == (3, 12, 10) and v["label"].dtype == torch.int64
    assert torch.equal(v["spacing"], torch.tensor([10, 1.5, 1.25]))


def test_acdc_volume_spacing_is_none_without_file_or_manifest_and_else_from_manifest(tmp_path):
    root = make_acdc(tmp_path / "A", spacing=False)
    assert ACDCVolumes(root, "val")[0]["spacing"] is None
    (root / "manifest.json").write_text(
        json.dumps({"files": {}, "spacing": {"patient004_frame01": [8.0, 1.0, 1.0]}})
    )
    assert torch.equal(ACDCVolumes(root, "val")[0]["spacing"], torch.tensor([8.0, 1.0, 1.0]))
    assert ACDCVolumes(root, "val")[1]["spacing"] is None


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="nowhere: ACDC root not found"):
        ACDCSlices(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere: ISIC root not found"):
        ISICImages(tmp_path / "nowhere")


def test_missing_list_file(acdc):
    (acdc / "val.list").unlink()
    with pytest.raises(DataError, match=r"val\.list: list file not found"):
        ACDCSlices(acdc)


def test_list_naming_a_missing_file(acdc):
    (acdc / "data" / "slices" / "patient001_frame02_slice_1.h5").unlink()
    missing = r"patient001_frame02_slice_1\.h5: slice file not found \(1 of 18 missing\)"
    with pytest.raises(DataError, match=missing + r", named in train_slices\.list"):
        ACDCSlices(acdc)
    (acdc / "data" / "patient004_frame02.h5").unlink()
    with pytest.raises(
        DataError, match=r"patient004_frame02\.h5: volume file not found .* named in val\.list"
    ):
        ACDCVolumes(acdc, "val")


@pytest.mark.parametrize("missing", ["image", "label"])
def test_h5_without_image_or_label(acdc, missing):
    p = acdc / "data" / "slices" / "patient002_frame01_slice_2.h5"
    keep = {
        k: v
        for k, v in {"image": np.zeros((12, 10), np.float32), "label": np.zeros((12, 10), np.uint8)}.items()
        if k != missing
    }
    h5(p, **keep)
    ds = ACDCSlices(acdc)
    i = ds.names.index("patient002_frame01_slice_2")
    with pytest.raises(
        DataError, match=r"patient002_frame01_slice_2\.h5: has datasets .* needs 'image' and 'label'"
    ):
        ds[i]
    if missing == "label":  # the unlabeled stream reads images only: a mask-less file is fine there
        it = ACDCSlices(acdc, optional_labels=True, transform=train_transform(16, rgb=False))[i]
        assert it["has_label"] is False and (it["label"] == -1).all() and it["label"].shape == (16, 16)


def test_image_label_shape_mismatch(acdc):
    h5(
        acdc / "data" / "slices" / "patient001_frame01_slice_0.h5",
        image=np.zeros((12, 10), np.float32),
        label=np.zeros((12, 9), np.uint8),
    )
    ds = ACDCSlices(acdc)
    with pytest.raises(
        DataError,
        match=r"patient001_frame01_slice_0\.h5: label shape \(12, 9\) differs from image shape \(12, 10\)",
    ):
        ds[ds.names.index("patient001_frame01_slice_0")]
    h5(
        acdc / "data" / "patient004_frame01.h5",
        image=np.zeros((3, 12, 10), np.float32),
        label=np.zeros((2, 12, 10), np.uint8),
    )
    with pytest.raises(DataError, match="label shape"):
        ACDCVolumes(acdc, "val")[0]


@pytest.mark.parametrize("bad", [4, -1])
def test_label_values_outside_the_classes(acdc, bad):
    lbl = np.zeros((12, 10), np.int16)
    lbl[3, 3] = bad
    h5(
        acdc / "data" / "slices" / "patient003_frame01_slice_1.h5",
        image=np.zeros((12, 10), np.float32),
        label=lbl,
    )
    span = rf"label values span {min(bad, 0)}\.\.{max(bad, 0)}, expected class ids 0\.\.3"
    with pytest.raises(DataError, match=r"patient003_frame01_slice_1\.h5: " + span):
        ACDCSlices(acdc)[1]


def test_unreadable_h5_and_wrong_rank(acdc):
    (acdc / "data" / "slices" / "patient003_frame01_slice_0.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(DataError, match=r"patient003_frame01_slice_0\.h5: cannot be read as HDF5"):
        ACDCSlices(acdc)[0]
    h5(
        acdc / "data" / "slices" / "patient003_frame01_slice_1.h5",
        image=np.zeros((1, 12, 10), np.float32),
        label=np.zeros((1, 12, 10), np.uint8),
    )
    with pytest.raises(DataError, match=r"image has shape \(1, 12, 10\), expected 2 axes"):
        ACDCSlices(acdc)[1]


def test_overlapping_acdc_splits_are_refused(acdc):
    lines(acdc / "test.list", ["patient005_frame01", "patient002_frame01"])
    with pytest.raises(DataError, match=r"1 patient\(s\) in both train and test, e.g. \['patient002'\]"):
        ACDCSlices(acdc)
    lines(acdc / "test.list", ["patient004_frame02"])
    with pytest.raises(DataError, match="in both val and test"):
        ACDCVolumes(acdc, "test")


# ---------------------------------------------------------------- labeled split


def test_labeled_split_takes_whole_patients_from_the_top(acdc):
    assert ACDC_PATIENTS_TO_SLICES[3] == 68 and ACDC_PATIENTS_TO_SLICES[7] == 136
    one = acdc_labeled_names(acdc, labeled_patients=1)
    assert len(one) == 6 and {n[:10] for n in one} == {"patient003"}
    two = acdc_labeled_names(acdc, labeled_patients=2)
    assert two[:6] == one and {n[:10] for n in two} == {"patient003", "patient001"}
    assert len(acdc_labeled_names(acdc, labeled_patients=3)) == 18
    assert acdc_labeled_names(acdc, labeled_slices=5) == acdc_splits(acdc)["train_slices"][:5]
    with pytest.raises(
        DataError, match=r"train_slices\.list: asked for 4 labeled patients but the training set has 3"
    ):
        acdc_labeled_names(acdc, labeled_patients=4)
    with pytest.raises(
        DataError, match=r"train_slices\.list: asked for 19 labeled slices but the training set has 18"
    ):
        acdc_labeled_names(acdc, labeled_slices=19)
    with pytest.raises(ValueError, match="exactly one"):
        acdc_labeled_names(acdc, labeled_patients=1, labeled_slices=3)


def test_labeled_split_counts_like_the_field_list(tmp_path):
    "A list shaped like the public one (shuffled patients, their slices together): 3 patients -> 68 lines."
    root = tmp_path / "L"
    root.mkdir()
    per_frame = {"patient099": 16, "patient038": 8, "patient050": 10, "patient100": 8}
    names = [
        f"{p}_frame{f:02d}_slice_{k}"
        for p, d in per_frame.items()
        for f in (1, 2)
        for k in np.random.default_rng(0).permutation(d) + 1
    ]
    lines(root / "train_slices.list", names)
    lines(root / "train.list", [])
    lines(root / "val.list", ["patient002_frame01"])
    lines(root / "test.list", ["patient001_frame01"])
    assert len(acdc_labeled_names(root, labeled_patients=3)) == 68
    lines(
        root / "train_slices.list", names[:5] + names[40:45] + names[5:40]
    )  # patient099 split by patient038
    with pytest.raises(DataError, match="not grouped by patient"):
        acdc_labeled_names(root, labeled_patients=1)


# ---------------------------------------------------------------- convert_acdc and the manifest


def test_convert_acdc_writes_the_layout_with_normalised_images_and_spacing(tmp_path):
    truth = write_release(tmp_path / "raw", patients=4, shape=(4, 12, 10), zooms=(1.5, 1.25, 10.0))
    root = convert_acdc(tmp_path / "raw", tmp_path / "out", seed=0)
    lists = acdc_splits(root)
    assert [len(lists[k]) for k in ("train", "val", "test", "train_slices")] == [4, 2, 2, 16]
    img, msk = truth["patient003", 12]
    with h5py.File(root / "data" / "patient003_frame02.h5") as f:  # frame12 (end systole) becomes frame02
        x, y, sp = f["image"][()], f["label"][()], f["spacing"][()]
    ref = (img - img.min()) / (img.max() - img.min())
    assert x.dtype == np.float32 and x.shape == (4, 12, 10) and np.allclose(x, ref, atol=1e-6)
    assert np.array_equal(y, msk) and np.array_equal(sp, np.float32([10.0, 1.25, 1.5]))
    with h5py.File(root / "data" / "slices" / "patient003_frame02_slice_3.h5") as f:
        assert np.allclose(f["image"][()], ref[2], atol=1e-6) and np.array_equal(f["label"][()], msk[2])
    doc = verify_manifest(root)
    assert len(doc["files"]) == 8 + 32 + 4 and doc["spacing"]["patient001_frame01"] == [10.0, 1.25, 1.5]
    assert doc["sources"]["patient003_frame02"] == "training/patient003/patient003_frame12.nii.gz"
    assert torch.equal(ACDCVolumes(root, "val")[0]["spacing"], torch.tensor([10.0, 1.25, 1.5]))
    again = convert_acdc(tmp_path / "raw", tmp_path / "out2", seed=0)  # same release, same bytes
    assert read_manifest(again)["files"] == doc["files"]


def test_convert_acdc_split_is_seeded_and_lists_can_be_reused(tmp_path):
    write_release(tmp_path / "raw", patients=6, shape=(2, 8, 8))
    a = acdc_splits(convert_acdc(tmp_path / "raw", tmp_path / "a", seed=0, val_patients=1, test_patients=2))
    b = acdc_splits(convert_acdc(tmp_path / "raw", tmp_path / "b", seed=0, val_patients=1, test_patients=2))
    c = [
        acdc_splits(
            convert_acdc(tmp_path / "raw", tmp_path / f"c{s}", seed=s, val_patients=1, test_patients=2)
        )
        for s in (1, 2, 3)
    ]
    assert a == b and any(x["train"] != a["train"] for x in c)
    assert [len(a[k]) for k in ("train", "val", "test")] == [6, 2, 4]
    src = tmp_path / "lists"
    src.mkdir()
    lines(src / "train.list", ["patient006_frame02", "patient006_frame01", "patient001_frame01"])
    lines(src / "val.list", ["patient002_frame01"])
    lines(src / "test.list", ["patient003_frame01", "patient003_frame02"])
    d = acdc_splits(convert_acdc(tmp_path / "raw", tmp_path / "d", lists_from=src))
    assert d["train_slices"] == [
        "patient006_frame02_slice_1",
        "patient006_frame02_slice_2",
        "patient006_frame01_slice_1",
        "patient006_frame01_slice_2",
        "patient001_frame01_slice_1",
        "patient001_frame01_slice_2",
    ]
    lines(src / "val.list", ["patient002_frame05"])
    with pytest.raises(
        DataError, match=r"val\.list names \['patient002_frame05'\] .* that the conversion did not produce"
    ):
        convert_acdc(tmp_path / "raw", tmp_path / "e", lists_from=src)


def test_convert_acdc_bad_input(tmp_path):
    with pytest.raises(DataError, match="ACDC release folder not found"):
        convert_acdc(tmp_path / "none", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no annotated ACDC frames"):
        convert_acdc(tmp_path / "empty", tmp_path / "o")
    write_release(tmp_path / "raw", patients=3, shape=(2, 8, 8))
    (tmp_path / "raw" / "training" / "patient002" / "patient002_frame01.nii.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"patient002_frame01\.nii\.gz: cannot be read as NIfTI"):
        convert_acdc(tmp_path / "raw", tmp_path / "o")


def test_manifest_detects_a_tampered_file(tmp_path):
    write_release(tmp_path / "raw", patients=3, shape=(2, 8, 8))
    root = convert_acdc(tmp_path / "raw", tmp_path / "out")
    ACDCSlices(root)  # verifies
    victim = root / "data" / "slices" / acdc_splits(root)["train_slices"][0]
    victim = victim.with_name(victim.name + ".h5")
    with h5py.File(victim, "r+") as f:
        f["image"][0, 0] += 0.5
    with pytest.raises(DataError, match=rf"(?s){victim.name}: SHA-256 .*Fix: convert the release again"):
        ACDCSlices(root)
    assert len(ACDCSlices(root, verify=False)) == 4
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: missing"):
        verify_manifest(root, cache=False)


# ---------------------------------------------------------------- ISIC


@pytest.mark.parametrize("official", [True, False])
def test_isic_layouts_pair_images_and_masks(tmp_path, official):
    root = make_isic(tmp_path / "ISIC", n=6, official=official, no_mask=(5,))
    index = isic_index(root)
    assert list(index) == [f"ISIC_{k:07d}" for k in range(6)] and index["ISIC_0000005"][1] is None
    assert all(m.name == f"{n}_segmentation.png" for n, (_, m) in index.items() if m is not None)
    it = ISICImages(root, ["ISIC_0000003"])[0]
    assert (
        it["image"].shape == (3, 23, 24)
        and it["image"].dtype == torch.float32
        and 0 <= it["image"].min() <= it["image"].max() <= 1
    )
    assert (
        it["label"].dtype == torch.int64
        and it["label"].unique().tolist() == [0, 1]
        and it["label"][5:15, 6:18].all()
    )
    with pytest.raises(
        DataError, match=r"ISIC_0000005\.jpg: no mask ISIC_0000005_segmentation\.png for this labeled image"
    ):
        ISICImages(root)
    un = ISICImages(root, optional_labels=True, transform=train_transform(16, rgb=True))[5]
    assert un["has_label"] is False and (un["label"] == -1).all() and un["image"].shape == (3, 16, 16)


def test_isic_bad_input(tmp_path):
    root = make_isic(tmp_path / "ISIC", n=4, official=False)
    (root / "ISIC_0000002.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match=r"ISIC_0000002\.jpg: cannot be decoded as an image"):
        ISICImages(root)[2]
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(root / "ISIC_0000001_segmentation.png")
    with pytest.raises(
        DataError, match=r"ISIC_0000001_segmentation\.png: mask is \(9, 9\) but its image is \(21, 24\)"
    ):
        ISICImages(root)[1]
    Image.fromarray(np.arange(20 * 24).reshape(20, 24).astype(np.uint8) % 3).save(
        root / "ISIC_0000000_segmentation.png"
    )
    with pytest.raises(DataError, match=r"ISIC_0000000_segmentation\.png: mask has more than two values"):
        ISICImages(root)[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "ISIC_0000099_segmentation.png")
    with pytest.raises(DataError, match=r"ISIC_0000099_segmentation\.png: mask without its image"):
        isic_index(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no ISIC_XXXXXXX.jpg images"):
        isic_index(tmp_path / "empty")
    with pytest.raises(DataError, match=r"no image ISIC_0000042\.jpg"):
        ISICImages(make_isic(tmp_path / "I2", n=2), ["ISIC_0000042"])


def test_isic_labeled_counts_reproduce_the_paper():
    assert (
        labeled_count(0.05, 1815) == 91
        and labeled_count(0.10, 1815) == 181
        and labeled_count(181, 1815) == 181
    )
    with pytest.raises(DataError, match="asked for 1816 labeled images"):
        labeled_count(1816, 1815)
    with pytest.raises(ValueError, match="positive count or a fraction"):
        labeled_count(True, 1815)


def test_isic_split_files_are_written_once_and_checked(tmp_path):
    root = make_isic(tmp_path / "ISIC", n=20, no_mask=(19,))
    d = tmp_path / "run" / "splits"
    # 19 images with masks: ceil(5.7) = 6 held out, 2 val and 4 test; train 13, labeled 6.5 -> 6 (ties down)
    sp = isic_split(root, seed=3, labeled=0.5, splits_dir=d)
    names = {"train.txt", "val.txt", "test.txt", "labeled_6.txt", "unlabeled_6.txt", "split.json"}
    assert {p.name for p in d.iterdir()} == names and not (root / "splits").exists()
    assert [len(sp[k]) for k in ("train", "val", "test", "labeled", "unlabeled")] == [13, 2, 4, 6, 8]
    assert sp["labeled"] == sp["train"][:6] and "ISIC_0000019" in sp["unlabeled"]
    assert not set(sp["test"]) & set(sp["val"])
    assert (
        isic_split(root, seed=3, labeled=6, splits_dir=d) == sp
        and isic_split(root, seed=4)["val"] != sp["val"]
    )
    assert set(isic_split(root, seed=3, labeled=3)["labeled"]) <= set(sp["labeled"])  # nested labeled sets
    lines(d / "unlabeled_6.txt", sp["unlabeled"] + sp["labeled"][:1])
    with pytest.raises(DataError, match=r"1 image\(s\) in both labeled and unlabeled"):
        isic_split(root, seed=3, labeled=6, splits_dir=d)
    lines(d / "unlabeled_6.txt", sp["unlabeled"])
    lines(d / "labeled_6.txt", sp["labeled"][:5] + ["ISIC_0000019"])
    with pytest.raises(DataError, match=r"ISIC_0000019\.jpg: no mask .* but it is in labeled\.txt"):
        isic_split(root, seed=3, labeled=6, splits_dir=d)
    lines(d / "test.txt", sp["test"][:3] + sp["train"][:1])
    with pytest.raises(DataError, match=r"in both train and test"):
        isic_split(root, seed=3, splits_dir=d)
    lines(d / "test.txt", sp["test"] + ["ISIC_0000077"])
    with pytest.raises(DataError, match=r"test\.txt: names \['ISIC_0000077'\] have no image"):
        isic_split(root, seed=3, splits_dir=d)
    with pytest.raises(DataError, match=r"asked for 14 labeled images but the training split has 13"):
        isic_split(root, seed=9, labeled=14)


# ---------------------------------------------------------------- transforms


def test_transforms_keep_masks_in_the_label_set_and_aligned():
    yy, xx = torch.meshgrid(torch.arange(50.0), torch.arange(70.0), indexing="ij")
    mask = ((yy // 10 + xx // 14) % 4).long()  # a 4-class checkerboard
    for rgb in (False, True):
        image = (mask.float() / 3).expand(3 if rgb else 1, -1, -1).clone()
        tf = train_transform(40, rgb=rgb, jitter=0.0, hue=0.0)
        for s in range(4):
            torch.manual_seed(s)
            im, m = tf(image, mask)
            assert im.shape == (3 if rgb else 1, 40, 40) and m.dtype == torch.int64
            assert set(m.unique().tolist()) <= {0, 1, 2, 3}
            assert (
                (im[0] * 3).round().long() == m
            ).float().mean() > 0.85  # the image still says what the mask says
    ev = eval_transform(32)
    a, b = ev(image, mask), ev(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and set(a[1].unique().tolist()) == {0, 1, 2, 3}


def test_train_transform_is_random_but_reproducible():
    image, mask = torch.rand(3, 30, 30), torch.randint(0, 2, (30, 30))
    tf = train_transform(24, rgb=True)
    torch.manual_seed(1)
    a = tf(image, mask)
    torch.manual_seed(1)
    b = tf(image, mask)
    c = tf(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


# ---------------------------------------------------------------- sampler


def test_two_stream_sampler_composition_and_determinism():
    s = TwoStreamBatchSampler(range(7), range(7, 40), batch_size=8, labeled_bs=3, seed=5)
    assert len(s) == 33 // 5
    e0 = list(s)
    assert len(e0) == 6 and all(len(b) == 8 for b in e0)
    assert all(i < 7 for b in e0 for i in b[:3]) and all(i >= 7 for b in e0 for i in b[3:])
    unl = [i for b in e0 for i in b[3:]]
    assert len(set(unl)) == 30 and set(unl) <= set(range(7, 40))
    e1 = list(s)
    assert e1 != e0
    s2 = TwoStreamBatchSampler(range(7), range(7, 40), 8, 3, seed=5)
    assert list(s2) == e0
    s2.set_epoch(1)
    assert list(s2) == e1
    assert list(TwoStreamBatchSampler(range(7), range(7, 40), 8, 3, seed=6)) != e0


def test_two_stream_labeled_stream_cycles_independently():
    a = TwoStreamBatchSampler(range(7), range(100, 130), batch_size=4, labeled_bs=2, seed=0)
    b = TwoStreamBatchSampler(range(7), range(100, 190), batch_size=4, labeled_bs=2, seed=0)
    la = [i for _ in range(3) for batch in a for i in batch[:2]]
    lb = [i for batch in b for i in batch[:2]]
    assert la == lb[: len(la)]  # the labeled stream ignores the unlabeled set
    for c in range(len(lb) // 7):
        assert sorted(lb[7 * c : 7 * c + 7]) == list(range(7))  # each pass: every labeled item once
    assert lb[:7] != lb[7:14]  # a fresh shuffle per pass


def test_two_stream_sampler_bad_input():
    with pytest.raises(ValueError, match="2 labeled items cannot fill labeled_bs=3"):
        TwoStreamBatchSampler(range(2), range(5, 20), 6, 3)
    with pytest.raises(ValueError, match="2 unlabeled items cannot fill one batch of 3"):
        TwoStreamBatchSampler(range(5), range(5, 7), 6, 3)
    with pytest.raises(ValueError, match="labeled_bs must be in 1..batch_size-1"):
        TwoStreamBatchSampler(range(5), range(5, 20), 6, 6)
    with pytest.raises(ValueError, match="both labeled and unlabeled"):
        TwoStreamBatchSampler(range(5), range(4, 20), 6, 3)


# ---------------------------------------------------------------- build_data, end to end


def test_build_data_acdc_on_the_cardiac_phantom(tmp_path):
    "The demo path: a phantom written to disk, read back by the real loader, batched by the two streams."
    from ucpcl.phantoms import write_cardiac_phantom

    root = write_cardiac_phantom(tmp_path / "phantom", num_patients=(4, 1, 1), size=48, slices=(3, 4), seed=0)
    data = build_data("acdc", root, size=64, labeled=2)
    slices = acdc_splits(root)["train_slices"]
    first_two = {n.split("_")[0] for n in slices[: len(data.labeled_idx)]}
    assert len(first_two) == 2 and len(data.labeled_idx) == sum(n.split("_")[0] in first_two for n in slices)
    assert len(data.labeled_idx) + len(data.unlabeled_idx) == len(slices) and (
        data.num_classes,
        data.in_channels,
    ) == (4, 1)
    assert "(2 patients)" in data.describe()
    loader = data.train_loader(batch_size=6, labeled_bs=2, seed=0)
    b = next(iter(loader))
    assert (
        b["image"].shape == (6, 1, 64, 64)
        and b["label"].shape == (6, 64, 64)
        and b["label"].dtype == torch.int64
    )
    assert b["has_label"].tolist() == [True] * 2 + [False] * 4
    assert (
        (b["label"][2:] == -1).all() and (b["monitor_label"][2:] >= 0).all() and (b["label"][:2] >= 0).all()
    )
    assert b["image"].dtype == torch.float32 and 0 <= b["image"].min() and b["image"].max() <= 1
    v = data.val[0]
    assert v["image"].ndim == 3 and v["spacing"].shape == (3,)


def test_build_data_isic_and_seeded_workers(tmp_path):
    root = make_isic(tmp_path / "ISIC", n=14, no_mask=(13,))
    data = build_data("isic", root, size=32, labeled=0.25, seed=1)
    assert (len(data.labeled_idx), len(data.unlabeled_idx), len(data.val), len(data.test)) == (2, 8, 2, 2)
    assert data.num_classes == 2 and data.in_channels == 3 and data.val[0]["image"].shape == (3, 32, 32)
    names = [data.train[i]["name"] for i in data.unlabeled_idx]
    it = data.train[data.unlabeled_idx[names.index("ISIC_0000013")]]
    assert (it["label"] == -1).all() and (it["monitor_label"] == -1).all() and it["has_label"] is False
    first = [
        next(iter(data.train_loader(batch_size=4, labeled_bs=2, num_workers=2)))["image"] for _ in range(2)
    ]
    assert first[0].shape == (4, 3, 32, 32) and torch.equal(
        first[0], first[1]
    )  # same seed, same augmented batch


def test_build_data_bad_arguments(acdc):
    with pytest.raises(ValueError, match=r"unknown dataset 'brats': valid ones are \['acdc', 'isic'\]"):
        build_data("brats", acdc, 32, 1)
    with pytest.raises(ValueError, match="labeled is a number of patients"):
        build_data("acdc", acdc, 32, 0.1)
    with pytest.raises(DataError, match="asked for 5 labeled patients"):
        build_data("acdc", acdc, 32, 5)


def test_h5_files_are_opened_once_per_process_bounded_and_rewrites_are_seen(tmp_path):
    from ucpcl.data import H5Files, _write_h5

    cache = H5Files(max_open=2)
    p = _write_h5(tmp_path / "a.h5", image=np.zeros((4, 4), np.float32))
    assert cache.get(p) is cache.get(p)  # opened once
    _write_h5(p, image=np.ones((4, 4), np.float32))  # rewritten (atomically) while open
    assert cache.get(p)["image"][0, 0] == 1
    for i in range(3):
        cache.get(_write_h5(tmp_path / f"{i}.h5", image=np.zeros((2, 2), np.float32)))
    assert len(cache.files) == 2  # least recently used closed


def test_isic_reduced_scale_decoding_keeps_mask_aligned(tmp_path):
    "A large JPEG is decoded at 1/2 scale when that keeps the shorter side >= min_side; the mask follows."
    yy, xx = np.mgrid[:600, :800]
    disk = (yy - 300) ** 2 + (xx - 400) ** 2 < 150**2
    img = np.where(
        disk[..., None], np.array([60, 40, 30], np.uint8), np.array([220, 180, 160], np.uint8)
    ).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "ISIC_0000000.jpg", quality=95)
    Image.fromarray(disk.astype(np.uint8) * 255).save(tmp_path / "ISIC_0000000_segmentation.png")
    full = ISICImages(tmp_path)[0]
    small = ISICImages(tmp_path, min_side=200)[0]
    assert full["image"].shape == (3, 600, 800) and small["image"].shape == (3, 300, 400)
    dark = small["image"].mean(0) < 0.4
    assert (dark == (small["label"] == 1)).float().mean() > 0.99
    assert abs(small["label"].float().mean() - full["label"].float().mean()) < 0.01


@pytest.mark.parametrize("dataset", ["acdc", "isic"])
def test_crop_setting_is_the_first_step_of_the_training_transform(tmp_path, dataset):
    "build_data(crop=False) resizes whole slices (the reference); the Trainer passes TrainConfig.crop to it."
    from torchvision.transforms import v2

    from ucpcl.train import TrainConfig, Trainer

    root = make_acdc(tmp_path / "A") if dataset == "acdc" else make_isic(tmp_path / "I", n=10)
    labeled = 1 if dataset == "acdc" else 3
    for crop, first in ((True, v2.RandomResizedCrop), (False, v2.Resize)):
        data = build_data(dataset, root, size=8, labeled=labeled, crop=crop)
        for part in (data.train.labeled, data.train.unlabeled):
            assert type(part.transform.tf.transforms[0]) is first
        cfg = TrainConfig(dataset=dataset, data_root=str(root), labeled=labeled, crop=crop, preset="small")
        data = Trainer(cfg.replace(out=str(tmp_path / f"run-{crop}"))).data
        assert type(data.train.labeled.transform.tf.transforms[0]) is first
