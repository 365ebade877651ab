"""Round 21: how good Eq. 7's pseudo labels are at the end of a run, from each decoder and from their mean.

For each run folder of a two-decoder method: load last.pt (the weights that labelled the last batches; batch
norm on its running statistics, so the check is close to, not the same as, the training passes), predict every
unlabeled training volume (the training patients after the first LABELED, whose labels the run never read)
slice by slice at the network's size, and compare with the true labels:

- each decoder's argmax and their mean's: foreground Dice pooled over the volumes, per class;
- Eq. 7 at H (default ln 2, the schedule's end) with p_hat the mean (the method) or the CNN decoder
  alone (p_t = p_c, `supp`'s and `ptdc`'s labels): the share of pixels kept, their accuracy, and per
  foreground class the share of its true pixels that get a certain, correct pseudo label.

Usage: python plcheck.py OUT.csv RUN_DIR [RUN_DIR ...] [--labeled 2] [--threshold H]  (OUT.csv is rewritten)
"""

import argparse, csv, math, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import grid  # noqa: F401  (registers grid.py's research variants, so their runs load)
from ucpcl.data import ACDCVolumes, acdc_labeled_names, acdc_patient
from ucpcl.predict import load_run
from ucpcl.uncertainty import certain_pseudo_label


def check(run: Path, labeled: int, H: float) -> dict:
    loaded = load_run(run, "last")
    net, s = loaded.net, loaded.net.cfg.img_size
    if net.transformer is None:
        raise ValueError(f"{run}: a single-decoder run; plcheck compares the two decoders of the method")
    ds = ACDCVolumes(loaded.cfg.data_root, "train", verify=False)
    first = set(map(acdc_patient, acdc_labeled_names(loaded.cfg.data_root, labeled_patients=labeled)))
    C = ds.num_classes
    conf = {k: np.zeros((C, C), np.int64) for k in ("cnn", "transformer", "mean")}
    # per true class: pixels with a certain pseudo label, and those of them labeled right
    kept = {k: np.zeros((C, 2), np.int64) for k in ("mean", "cnn")}
    with torch.no_grad():
        for i, name in enumerate(ds.names):
            if acdc_patient(name) in first:
                continue
            item = ds[i]
            x = F.interpolate(
                item["image"][:, None].float(), size=(s, s), mode="bilinear", align_corners=False
            )
            y = F.interpolate(item["label"][:, None].float(), size=(s, s), mode="nearest")[:, 0].long()
            feats = net.encode(x)
            p_c, p_t = (
                net.decode_cnn(feats).float().softmax(1),
                net.decode_transformer(feats).float().softmax(1),
            )
            for k, p in (("cnn", p_c), ("transformer", p_t), ("mean", (p_c + p_t) / 2)):
                pairs = C * y.flatten() + p.argmax(1).flatten()
                conf[k] += np.bincount(pairs.numpy(), minlength=C * C).reshape(C, C)
            for k, (a, b) in (("mean", (p_c, p_t)), ("cnn", (p_c, p_c))):
                t = certain_pseudo_label(a, b, H)
                for c in range(C):
                    m = y == c
                    kept[k][c] += [int((t[m] >= 0).sum()), int((t[m] == c).sum())]
    row = {"run": str(run), "H": H}
    for k, m in conf.items():
        for c in range(1, C):
            row[f"dice_{k}{c}"] = 2 * m[c, c] / max(m[c].sum() + m[:, c].sum(), 1)
    for k, m in kept.items():
        row[f"kept_{k}"] = m[:, 0].sum() / conf["cnn"].sum()
        row[f"acc_{k}"] = m[:, 1].sum() / max(m[:, 0].sum(), 1)
        for c in range(1, C):
            row[f"found_{k}{c}"] = m[c, 1] / max(conf["cnn"][c].sum(), 1)  # certain and right, of the class
    return {k: float(v) if not isinstance(v, str) else v for k, v in row.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--labeled", type=int, default=2)
    p.add_argument("--threshold", type=float, default=math.log(2))
    a = p.parse_args(argv)
    rows = [check(r, a.labeled, a.threshold) for r in a.runs]
    for r in rows:
        cells = lambda key: " ".join(f"{100 * r[k]:5.1f}" for k in r if k.startswith(key))
        print(
            f"{Path(r['run']).name}: dice cnn {cells('dice_cnn')} | transformer {cells('dice_transformer')}"
            f" | mean {cells('dice_mean')}"
        )
        for k in ("mean", "cnn"):
            print(
                f"  Eq. 7 from {k:4s}: kept {100 * r['kept_' + k]:5.1f} acc {100 * r['acc_' + k]:5.1f}"
                f" | found per class {cells('found_' + k)}"
            )
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
