"""Round 16: which class a run's best.pt gives each organ's pixels on the test patients (no retraining).

For each run folder: load best.pt, segment every test volume slice by slice as `ucpcl predict` does (the CNN
decoder at the network's size, resized back), and count pixels by (true class, predicted class) over all test
volumes. Prints, per run, the share of each organ's pixels predicted as each class, and writes one row per run
with every share to OUT.csv, so that a loss in one organ can be told apart as missed (predicted background) or
mistaken for another organ.

Usage: python confusion.py OUT.csv RUN_DIR [RUN_DIR ...]  (OUT.csv is rewritten)
"""

import csv, sys
from pathlib import Path

import numpy as np
import torch

from ucpcl.data import ACDCVolumes
from ucpcl.predict import load_run, segment

import grid  # noqa: F401  (registers grid.py's research variants, so their runs load)


def confusion(run: Path) -> np.ndarray:
    "(C, C) pixel counts over the test split: rows the true class, columns the predicted one."
    loaded = load_run(run)
    ds = ACDCVolumes(loaded.cfg.data_root, "test", verify=False)
    C = ds.num_classes
    counts = np.zeros((C, C), dtype=np.int64)
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            image, label = item["image"], item["label"]  # (D, H, W) each
            pred, _ = segment(loaded.net, image[:, None] if image.ndim == 3 else image)
            pairs = C * label.long().flatten().numpy() + pred.flatten().numpy()
            counts += np.bincount(pairs, minlength=C * C).reshape(C, C)
    return counts


def main(out: str, *runs: str):
    rows = []
    for run in map(Path, runs):
        c = confusion(run)
        share = c / c.sum(1, keepdims=True)  # each true class's pixels, by predicted class
        row = {"run": str(run)}
        row |= {f"true{t}_pred{p}": float(share[t, p]) for t in range(len(c)) for p in range(len(c))}
        dice = [2 * c[k, k] / (c[k].sum() + c[:, k].sum()) for k in range(1, len(c))]  # pooled over volumes
        row |= {f"pooled_dice{k + 1}": float(d) for k, d in enumerate(dice)}
        rows.append(row)
        print(
            run.name,
            " | ".join(f"{t}: " + " ".join(f"{100 * v:4.1f}" for v in share[t]) for t in range(1, len(c))),
        )
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
