"On-disk checks of the phantoms (ucpcl.phantoms): layouts, anatomy, determinism, refusal and idempotence."

import hashlib, json, re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from ucpcl.phantoms import (
    ABDOMEN_GROUPS,
    ABDOMEN_PHASES,
    ISIC_INPUT,
    ISIC_TRUTH,
    abdomen_labels,
    abdomen_volume,
    cardiac_volume,
    lesion_image,
    sample_abdomen,
    write_abdomen_phantom,
    write_cardiac_phantom,
    write_lesion_phantom,
    write_phantom,
)

CARDIAC = dict(num_patients=(3, 1, 1), size=64, seed=0)
ABDOMEN = dict(num_patients=(3, 1, 1), size=64, seed=0)
LESION = dict(num_images=8, seed=0)


def digest(root: Path) -> dict[str, str]:
    "SHA-256 of every file below `root`, by relative path."
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def acdc(module_tmp):
    return write_cardiac_phantom(module_tmp / "acdc", **CARDIAC)


@pytest.fixture(scope="module")
def abdomen(module_tmp):
    return write_abdomen_phantom(module_tmp / "abdomen", **ABDOMEN)


@pytest.fixture(scope="module")
def isic(module_tmp):
    return write_lesion_phantom(module_tmp / "isic", **LESION)


def lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n") and "\n\n" not in text and "\r" not in text, f"{path.name}: one name a line"
    return text.splitlines()


# --- determinism ---------------------------------------------------------------------------------


def test_cardiac_files_are_byte_identical(acdc, tmp_path):
    again = write_cardiac_phantom(tmp_path / "again", **CARDIAC)
    assert digest(again) == digest(acdc)
    other = write_cardiac_phantom(tmp_path / "other", **{**CARDIAC, "seed": 1})
    assert digest(other) != digest(acdc)


def test_abdomen_files_are_byte_identical(abdomen, tmp_path):
    assert digest(write_abdomen_phantom(tmp_path / "again", **ABDOMEN)) == digest(abdomen)
    other = write_abdomen_phantom(tmp_path / "other", **{**ABDOMEN, "seed": 1})
    assert digest(other) != digest(abdomen)


def test_lesion_files_are_byte_identical(isic, tmp_path):
    assert digest(write_lesion_phantom(tmp_path / "again", **LESION)) == digest(isic)
    assert digest(write_lesion_phantom(tmp_path / "other", **{**LESION, "seed": 1})) != digest(isic)


def test_generators_are_pure_functions_of_the_seed():
    a, b = cardiac_volume(5, 6, 48), cardiac_volume(5, 6, 48)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(cardiac_volume(6, 6, 48)[0], a[0])
    np.testing.assert_array_equal(lesion_image(3, 64)[0], lesion_image(3, 64)[0])
    a, b = abdomen_volume(5, 6, 48), abdomen_volume(5, 6, 48)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(abdomen_volume(6, 6, 48)[0], a[0])


# SHA-256 (16 hex digits) of generated arrays, floats rounded to 4 decimals, as the generators made them
# before the abdominal phantom was added (main at 07141f3): adding a phantom must not change the others
PINNED = {
    ("cardiac", 3, 10, 48, "ED"): "1f777c9057da32b7",
    ("cardiac", 4, 8, 64, "ES"): "57d3451a4ed0ddaa",
    ("lesion", 3, 64): "c8436c031f3d80dc",
    ("lesion", 5, (80, 120)): "114c0df81f334b64",
}


def array_digest(arrays) -> str:
    "Digest of a tuple of arrays: floats rounded to 4 decimals (robust to last-bit differences), ints as is."
    h = hashlib.sha256()
    for a in map(np.asarray, arrays):
        h.update(np.round(a, 4).tobytes() if a.dtype.kind == "f" else a.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("key", PINNED, ids=str)
def test_cardiac_and_lesion_phantoms_unchanged(key):
    kind, *args = key
    arrays = cardiac_volume(*args) if kind == "cardiac" else lesion_image(*args)
    assert array_digest(arrays) == PINNED[key]


def test_write_phantom_dispatches_abdomen(abdomen, tmp_path):
    kw = {k: v for k, v in ABDOMEN.items() if k != "seed"}
    assert digest(write_phantom("abdomen", tmp_path / "a", seed=0, **kw)) == digest(abdomen)


# --- the ACDC layout -----------------------------------------------------------------------------


def test_acdc_lists(acdc):
    train, val, test = (lines(acdc / f"{s}.list") for s in ("train", "val", "test"))
    name = re.compile(r"patient\d{3}_frame\d{2}")
    assert all(name.fullmatch(n) for n in train + val + test)
    assert len(train) == 6 and len(val) == 2 and len(test) == 2  # two frames per patient
    assert {n[:10] for n in train} == {"patient001", "patient002", "patient003"}
    assert {n[:10] for n in val} == {"patient004"} and {n[:10] for n in test} == {"patient005"}
    assert [n for n in train if n.endswith("frame01")] == [
        "patient001_frame01",
        "patient002_frame01",
        "patient003_frame01",
    ]
    slices = lines(acdc / "train_slices.list")
    assert all(re.fullmatch(r"patient\d{3}_frame\d{2}_slice_\d+", s) for s in slices)
    # ordered by patient: the first N lines are whole patients
    patients = [s[:10] for s in slices]
    assert patients == sorted(patients)
    with h5py.File(acdc / "data" / f"{train[0]}.h5") as f, h5py.File(acdc / "data" / f"{train[1]}.h5") as g:
        depth = len(f["image"])
        assert len(g["image"]) == depth  # ED and ES of a patient have the same slices
    assert slices[:depth] == [f"{train[0]}_slice_{k}" for k in range(depth)]
    assert {s.rsplit("_slice_", 1)[0] for s in slices} == set(train)


def test_acdc_files(acdc):
    vols = [n for s in ("train", "val", "test") for n in lines(acdc / f"{s}.list")]
    assert sorted(p.stem for p in (acdc / "data").glob("*.h5")) == sorted(vols)
    slices = []
    for v in vols:
        with h5py.File(acdc / "data" / f"{v}.h5") as f:
            assert sorted(f) == ["image", "label", "spacing"]
            img, lbl, sp = f["image"][:], f["label"][:], f["spacing"][:]
        assert img.dtype == np.float32 and lbl.dtype == np.uint8 and sp.dtype == np.float32
        assert img.ndim == 3 and img.shape == lbl.shape and img.shape[1:] == (64, 64) and 8 <= len(img) <= 12
        assert img.min() == 0.0 and img.max() == 1.0  # min-max normalised volume
        assert set(np.unique(lbl)) <= {0, 1, 2, 3}
        assert (
            sp.shape == (3,) and 7 <= sp[0] <= 10 and sp[1] == sp[2] and 2 < sp[1] < 4
        )  # (z, y, x) mm, 64 px
        for k in range(len(img)):  # each slice file is that slice of its volume
            with h5py.File(acdc / "data" / "slices" / f"{v}_slice_{k}.h5") as f:
                assert sorted(f) == ["image", "label"]
                assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8
                np.testing.assert_array_equal(f["image"][:], img[k])
                np.testing.assert_array_equal(f["label"][:], lbl[k])
            slices.append(f"{v}_slice_{k}")
    assert sorted(p.stem for p in (acdc / "data" / "slices").glob("*.h5")) == sorted(slices)
    assert sorted(p.name for p in acdc.iterdir()) == sorted(
        ["PHANTOM.json", "data", "test.list", "train.list", "train_slices.list", "val.list"]
    )


def test_acdc_stamp(acdc):
    meta = json.loads((acdc / "PHANTOM.json").read_text())
    assert meta["complete"] is True and meta["generator"] == "ucpcl.phantoms"
    assert (
        meta["params"]["seed"] == 0
        and meta["params"]["kind"] == "cardiac"
        and meta["params"]["num_patients"] == [3, 1, 1]
    )


def test_every_class_in_middle_slices():
    for seed in range(10):
        for phase in ("ED", "ES"):
            _, lbl, _ = cardiac_volume(seed, num_slices=10, size=64, phase=phase)
            for k in (3, 4, 5):
                assert set(np.unique(lbl[k])) == {0, 1, 2, 3}, f"patient seed {seed} {phase} slice {k}"


def test_anatomy_base_to_apex():
    _, ed, _ = cardiac_volume(2, 10, 96, "ED")
    _, es, _ = cardiac_volume(2, 10, 96, "ES")
    lv, rv = (ed == 3).sum((1, 2)), (ed == 1).sum((1, 2))
    assert lv[0] > lv[5] > lv[-1] and rv[0] > rv[5] and rv[-1] == 0  # shrinks; the RV ends before the apex
    assert (es == 3).sum() < (ed == 3).sum() and (es == 2).sum() > 0.8 * (ed == 2).sum()


# --- the abdominal CT phantom ------------------------------------------------------------------


def test_abdomen_layout(abdomen):
    train, val, test = (lines(abdomen / f"{s}.list") for s in ("train", "val", "test"))
    assert train == [f"patient00{i}_frame0{f}" for i in (1, 2, 3) for f in (1, 2)]
    assert val == ["patient004_frame01", "patient004_frame02"] and test[0] == "patient005_frame01"
    slices = lines(abdomen / "train_slices.list")
    assert {s.rsplit("_slice_", 1)[0] for s in slices} == set(train)
    assert [s[:10] for s in slices] == sorted(s[:10] for s in slices)  # grouped by patient
    for v in train + val + test:
        with h5py.File(abdomen / "data" / f"{v}.h5") as f:
            img, lbl, sp = f["image"][:], f["label"][:], f["spacing"][:]
        assert img.dtype == np.float32 and lbl.dtype == np.uint8 and img.shape == lbl.shape
        assert img.shape[1:] == (64, 64) and 8 <= len(img) <= 12 and set(np.unique(lbl)) == {0, 1, 2, 3}
        assert img.min() == 0.0 and img.max() <= 1.0  # the window: air is black, bone may saturate
        assert 120 / 11 <= sp[0] <= 160 / 7 and sp[1] == sp[2] and 3 < sp[1] < 7  # (z, y, x) mm at 64 px
        with h5py.File(abdomen / "data" / "slices" / f"{v}_slice_3.h5") as f:
            np.testing.assert_array_equal(f["image"][:], img[3])
    meta = json.loads((abdomen / "PHANTOM.json").read_text())
    assert meta["complete"] and meta["params"]["kind"] == "abdomen"
    assert meta["classes"] == ["background", "liver", "kidneys", "spleen"]
    assert set(meta["groups"]) == {f"patient00{i}" for i in range(1, 6)}
    assert set(meta["groups"].values()) <= set(ABDOMEN_GROUPS)


def test_abdomen_loads_as_acdc(abdomen):
    from ucpcl.data import build_data

    data = build_data("acdc", abdomen, size=48, labeled=1)
    assert data.num_classes == 4 and len(data.labeled_idx) > 0 and len(data.unlabeled_idx) > 0
    assert data.class_names == ["background", "liver", "kidneys", "spleen"]  # its PHANTOM.json's
    item = data.train[data.labeled_idx[0]]
    assert item["image"].shape == (1, 48, 48) and set(item["label"].unique().tolist()) <= {0, 1, 2, 3}
    assert data.test[0]["label"].max() == 3


@pytest.mark.parametrize("seed", range(6))
def test_abdomen_anatomy_has_one_orientation(seed):
    t = (np.arange(64) - 31.5) * 6.0
    Y, X = np.meshgrid(t, t, indexing="ij")
    lab, _ = abdomen_labels(sample_abdomen(np.random.default_rng([seed, 0])), np.linspace(0, 1, 10), X, Y)
    cols, rows = np.meshgrid(np.arange(64), np.arange(64))
    centre = {c: (cols[(lab == c).any(0)].mean(), rows[(lab == c).any(0)].mean()) for c in (1, 2, 3)}
    assert centre[1][0] < 31.5 < centre[3][0]  # liver on the image's left, spleen on its right
    assert centre[2][1] > centre[1][1]  # the kidneys lie behind the liver's centre
    kidney_cols = cols[(lab == 2).any(0)]
    assert kidney_cols.min() < 31.5 < kidney_cols.max()  # one kidney on each side
    area = (lab > 0).sum((1, 2))
    assert (lab[0] == 2).sum() == 0 and (lab[-1] == 3).sum() == 0 and area.max() > 0
    assert (lab[0] == 1).sum() > (lab[-1] == 1).sum()  # the liver tapers towards its tip


def test_abdomen_phases():
    spread, moved = [], []
    for seed in range(4):
        (a, la, _), (p, lp, _) = (abdomen_volume(seed, 8, 64, ph) for ph in ABDOMEN_PHASES)
        k = lambda im, lb: np.percentile(im[lb == 2], 90) - np.percentile(im[lb == 2], 10)
        spread.append(k(a, la) > k(p, lp))  # cortex and medulla differ in the arterial phase only
        n_a, n_p = int((la > 0).sum()), int((lp > 0).sum())
        moved.append((la != lp).any() and abs(n_a - n_p) < 0.2 * n_a)
    assert all(spread) and all(moved)  # same organs, moved a little by the second breath-hold


# --- the ISIC layout -----------------------------------------------------------------------------


def test_isic_layout(isic):
    assert sorted(p.name for p in isic.iterdir()) == sorted(["PHANTOM.json", ISIC_INPUT, ISIC_TRUTH])
    assert (
        ISIC_INPUT == "ISIC2018_Task1-2_Training_Input"
        and ISIC_TRUTH == "ISIC2018_Task1_Training_GroundTruth"
    )
    jpgs = sorted((isic / ISIC_INPUT).iterdir())
    pngs = sorted((isic / ISIC_TRUTH).iterdir())
    assert [p.name for p in jpgs] == [f"ISIC_{i:07d}.jpg" for i in range(8)]
    assert [p.name for p in pngs] == [f"ISIC_{i:07d}_segmentation.png" for i in range(8)]
    sizes = set()
    for j, m in zip(jpgs, pngs):
        with Image.open(j) as im, Image.open(m) as mk:
            assert im.format == "JPEG" and im.mode == "RGB" and mk.format == "PNG" and mk.mode == "L"
            assert im.size == mk.size and 128 <= min(im.size) and max(im.size) <= 192
            vals = set(np.unique(np.asarray(mk)).tolist())
            assert vals == {0, 255}
            sizes.add(im.size)
    assert len(sizes) > 1  # sizes vary, as in ISIC


# --- refusing, re-writing, dispatch ----------------------------------------------------------------


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for kind in ("cardiac", "abdomen", "lesion"):
        with pytest.raises(
            ValueError, match="not empty and holds no phantom.*choose a new or empty folder"
        ) as e:
            write_phantom(kind, tmp_path / "mine")
        assert str(tmp_path / "mine") in str(e.value)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="refusing"):
        write_phantom("lesion", tmp_path / "file")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "PHANTOM.json").write_text('{"generator": "someone else"}')
    with pytest.raises(ValueError, match="holds no phantom"):
        write_phantom("lesion", tmp_path / "other")


def test_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    write_lesion_phantom(tmp_path / "empty", num_images=2)
    assert len(list((tmp_path / "empty" / ISIC_INPUT).iterdir())) == 2


def test_refuses_other_parameters(tmp_path):
    root = write_lesion_phantom(tmp_path / "isic", num_images=2)
    with pytest.raises(ValueError, match=r"other parameters \(differing: \['num_images', 'seed'\]\)"):
        write_lesion_phantom(root, num_images=3, seed=1)
    with pytest.raises(ValueError, match="other parameters"):
        write_cardiac_phantom(root, num_patients=(1, 1, 1), size=32)


def test_idempotent_rewrite(tmp_path):
    root = write_cardiac_phantom(tmp_path / "acdc", num_patients=(1, 1, 1), size=32)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    h = digest(root)
    assert write_phantom("cardiac", root, num_patients=(1, 1, 1), size=32) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before  # nothing rewritten
    # an interrupted write (stamp still incomplete, a file missing) is finished on the next call
    stamp = json.loads((root / "PHANTOM.json").read_text())
    (root / "PHANTOM.json").write_text(json.dumps({**stamp, "complete": False}))
    next((root / "data" / "slices").iterdir()).unlink()
    write_cardiac_phantom(root, num_patients=(1, 1, 1), size=32)
    assert digest(root) == h


def test_unknown_kind_and_bad_arguments(tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown phantom kind 'mri'; choose one of \['abdomen', 'cardiac', 'lesion'\]"
    ):
        write_phantom("mri", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="phase must be"):
        cardiac_volume(0, phase="diastole")
    with pytest.raises(ValueError, match="phase must be 'arterial' or 'portal'"):
        abdomen_volume(0, phase="venous")
    with pytest.raises(ValueError, match="num_patients"):
        write_abdomen_phantom(tmp_path / "w", num_patients=(1, 1))
    with pytest.raises(ValueError, match="frames must be"):
        write_cardiac_phantom(tmp_path / "y", frames=("ED", "XX"))
    with pytest.raises(ValueError, match="num_patients"):
        write_cardiac_phantom(tmp_path / "y", num_patients=(2, 0, 1))
    with pytest.raises(ValueError, match="at least 16"):
        lesion_image(0, (8, 100))
    with pytest.raises(TypeError):
        write_phantom("lesion", tmp_path / "z", num_patients=(1, 1, 1))
