"""Round 13: where a run's Dice is lost, patient by patient (no retraining).

For each run folder: load best.pt (the network the test reads) and segment every volume of the training and
test splits the way the test does (`ucpcl.evaluate.evaluate` on the CNN decoder's logits, per-volume 3D Dice,
no HD95). The training volumes split into the labeled patients (the run's `labeled` first patients of
train_slices.list) and the unlabeled ones, which the run saw without their labels.

Each volume also gets an appearance distance from the labeled volumes: the image's mean intensity inside each
class of its label (background and each organ), and the largest of those per-class gaps to the nearest labeled
volume. It needs the labels, so it measures the data, not the network: how far a patient's tissue intensities
lie from what the labeled patients showed. Test volumes are split at the median distance into "near" and "far"
halves, and Spearman's rho relates the distance to the Dice over all test volumes.

On a phantom composed by more_unlabeled.py (round 14), `unlabeled_base` and `unlabeled_added` split the
unlabeled patients into the base phantom's and the added ones (empty on other data).

Usage: python patients.py OUT.csv RUN_DIR [RUN_DIR ...]  (one row per run; OUT.csv is rewritten)
"""

import csv, json, sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from ucpcl.data import ACDCVolumes, acdc_labeled_names, acdc_patient
from ucpcl.evaluate import evaluate
from ucpcl.predict import load_run


def class_means(label: torch.Tensor, image: torch.Tensor, num_classes: int) -> np.ndarray:
    "The image's mean intensity inside each class of the label (NaN for a class the volume lacks)."
    return np.array(
        [image[label == k].mean().item() if (label == k).any() else np.nan for k in range(num_classes)]
    )


def appearance_distance(means: dict[str, np.ndarray], labeled: list[str]) -> dict[str, float]:
    "Per volume: the largest per-class gap of class means to the nearest labeled volume (classes both have)."
    gap = lambda a, b: np.nanmax(np.abs(a - b))
    return {n: min(gap(m, means[k]) for k in labeled) for n, m in means.items()}


def run_row(run: Path) -> dict:
    loaded = load_run(run)
    net, cfg = loaded.net, loaded.cfg
    logits = lambda z: net.decode_cnn(net.encode(z))
    labeled = {acdc_patient(n) for n in acdc_labeled_names(cfg.data_root, labeled_patients=int(cfg.labeled))}
    dice, group, means = {}, {}, {}
    with torch.no_grad():
        for split in ("train", "test"):
            ds = ACDCVolumes(cfg.data_root, split, verify=False)
            res = evaluate(logits, ds, ds.num_classes, net.cfg.img_size, True, hd95=False)
            for i, case in enumerate(res.cases):
                n, item = case["name"], ds[i]
                dice[n] = 100 * float(np.mean(case["dice"]))
                group[n] = (
                    "test" if split == "test" else ("labeled" if acdc_patient(n) in labeled else "unlabeled")
                )
                means[n] = class_means(item["label"], item["image"], ds.num_classes)
    dist = appearance_distance(means, [n for n in group if group[n] == "labeled"])
    test = [n for n in group if group[n] == "test"]
    d, s = np.array([dist[n] for n in test]), np.array([dice[n] for n in test])
    near = d <= np.median(d)
    mean = lambda g: float(np.mean([dice[n] for n in group if group[n] == g]))
    stamp = Path(cfg.data_root) / "PHANTOM.json"
    added = set(json.loads(stamp.read_text()).get("composed", {}).get("extra", []) if stamp.is_file() else [])
    for n in group:
        if added and group[n] == "unlabeled":
            group[n] = "unlabeled_added" if acdc_patient(n) in added else "unlabeled_base"
    unlabeled = [dice[n] for n in group if group[n].startswith("unlabeled")]
    return dict(
        run=run.name,
        data=Path(cfg.data_root).name,
        iteration=loaded.iteration,
        labeled=mean("labeled"),
        unlabeled=float(np.mean(unlabeled)),
        test=mean("test"),
        test_near=float(s[near].mean()),
        test_far=float(s[~near].mean()),
        rho=float(spearmanr(d, s)[0]),
        n_test=len(test),
        unlabeled_base=mean("unlabeled_base") if added else "",
        unlabeled_added=mean("unlabeled_added") if added else "",
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    rows = []
    for run in map(Path, argv[1:]):
        rows.append(run_row(run))
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    with open(argv[0], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
