"""Input pipeline throughput: training images per second, and per worker, for ACDC- and ISIC-format data.

    python bench/pipeline.py                       # 0, 1 and 2 workers, 224 px, the paper's augmentation
    python bench/pipeline.py --workers 0 4 8 --batches 40

Fixtures in the real on-disk formats and at the real data's sizes are written to a temporary folder first:
ACDC slices of 256 x 216 (gzip-compressed h5, as `ucpcl convert-acdc` writes them) and ISIC JPEGs of 1024 x
768 with PNG masks. Each row runs the training DataLoader of `ucpcl.data` (two-stream batches of 16, the
training augmentation of `ucpcl.transforms`, resize to `--size`) and reports images/s after the first batch
(worker start-up excluded). A script, not a timed test; the figures depend on the machine.
"""

from __future__ import annotations
import argparse, time
from pathlib import Path

import numpy as np
from PIL import Image

from ucpcl.core import scratch


def acdc_fixture(root: Path, n_patients: int = 6, slices: int = 10, shape=(256, 216)) -> Path:
    from ucpcl.data import _write_h5

    rng = np.random.default_rng(0)
    (root / "data" / "slices").mkdir(parents=True, exist_ok=True)
    names, vols = [], []
    for p in range(1, n_patients + 1):
        vol = f"patient{p:03d}_frame01"
        vols.append(vol)
        img = rng.random((slices, *shape), dtype=np.float32)
        lbl = rng.integers(0, 4, (slices, *shape), dtype=np.uint8)
        _write_h5(root / "data" / f"{vol}.h5", image=img, label=lbl)
        for k in range(slices):
            names.append(f"{vol}_slice_{k}")
            _write_h5(root / "data" / "slices" / f"{names[-1]}.h5", image=img[k], label=lbl[k])
    (root / "train_slices.list").write_text("\n".join(names[: -2 * slices]) + "\n")
    (root / "train.list").write_text("\n".join(vols[:-2]) + "\n")
    (root / "val.list").write_text(vols[-2] + "\n")
    (root / "test.list").write_text(vols[-1] + "\n")
    return root


def isic_fixture(root: Path, n: int = 60, shape=(768, 1024)) -> Path:
    rng = np.random.default_rng(0)
    ims, gts = root / "ISIC2018_Task1-2_Training_Input", root / "ISIC2018_Task1_Training_GroundTruth"
    ims.mkdir(parents=True, exist_ok=True)
    gts.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(n):
        img = (rng.random((*shape, 3)) * 60 + 120).astype(np.uint8)
        mask = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (shape[0] / 3) ** 2).astype(
            np.uint8
        ) * 255
        Image.fromarray(img).save(ims / f"ISIC_{i:07d}.jpg", quality=90)
        Image.fromarray(mask).save(gts / f"ISIC_{i:07d}_segmentation.png")
    return root


def throughput(dataset: str, root: Path, workers: int, batches: int, size: int) -> float:
    from ucpcl.data import build_data

    d = build_data(dataset, root, size=size, labeled=2 if dataset == "acdc" else 16, seed=0)
    loader = d.train_loader(batch_size=16, labeled_bs=8, num_workers=workers)
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not counted
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += len(b["image"])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    tmp = scratch("ucpcl-bench-")  # removed when the script ends
    roots = {"acdc": acdc_fixture(tmp / "acdc"), "isic": isic_fixture(tmp / "isic")}
    print(f"training DataLoader, batches of 16 at {a.size} px with the paper's augmentation; images/s")
    print("| data (on-disk format) | workers | images/s | per worker |")
    print("|---|---|---|---|")
    for name, root in roots.items():
        for w in a.workers:
            r = throughput(name, root, w, a.batches, a.size)
            label = {"acdc": "ACDC slices 256x216 (h5)", "isic": "ISIC 1024x768 (JPEG+PNG)"}[name]
            print(f"| {label} | {w} | {r:.1f} | {r / max(w, 1):.1f} |")


if __name__ == "__main__":
    main()
