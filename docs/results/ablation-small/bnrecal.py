"""Post-hoc batch-norm recalibration of trained ucpcl checkpoints (no retraining).

For each run folder: load best.pt, evaluate the test split exactly as Trainer.test does for best.pt
(Trainer.evaluate_split("test"), per-volume 3D Dice = metrics["test"]["best"]["dice"]), then re-estimate the
running mean/var of every BatchNorm layer on the prediction path (encoder + CNN decoder) from
  (a) the labeled training slices only, (b) the unlabeled training slices only, (c) all training slices,
and evaluate again. HD95 is skipped (it does not enter Dice).

BN re-estimation: reset_running_stats(), momentum=None (cumulative average over batches), model in eval mode
with only the BatchNorm modules in train mode (the CNN path has no dropout, so this equals train mode there),
forward passes of method.predict_logits (encode + decode_cnn, the path the test uses) under torch.no_grad.
Images: the training slices resized whole to the training input side (eval_transform: no random crop,
rotation, flip or jitter). Batches of at most 16, sizes balanced (ceil(N/16) batches of near-equal size) in a
fixed random order (seed 0), so that the equal per-batch weighting of momentum=None ~ per-image weighting.

Supplementary (--aug): only (c) again, from one seeded draw of the library's training augmentation of every
training slice (train_transform with the run's crop setting), to see what the no-augmentation choice changes.

Usage: python bnrecal.py [--aug] OUT.jsonl RUN_DIR [RUN_DIR ...]  (one JSON line per run, appended).
Round 9's tables of recalibrated Dice (README, finding 18; bnrecal-r9.csv) come from its output.
"""

import json, math, sys, time
from pathlib import Path

import torch
import torch.nn as nn

from ucpcl.data import ACDCSlices, acdc_labeled_names, acdc_splits, build_data
from ucpcl.method import UCPCL
from ucpcl.models import get_preset
from ucpcl.train import METHODS, Trainer, TrainConfig
from ucpcl.transforms import eval_transform, train_transform

# the runs of grid.py round 9 used a UCPCL subclass registered as "ucpcl-splitbn" that only changed the
# training forward pass (streams apart); prediction (predict_logits) and the state dict are UCPCL's
METHODS.setdefault("ucpcl-splitbn", UCPCL)

BS = 16


def balanced_batches(n: int, bs: int = BS, seed: int = 0) -> list[list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = math.ceil(n / bs)
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    out, s = [], 0
    for z in sizes:
        out.append(order[s : s + z])
        s += z
    return out


def load_images(root: str, size: int, labeled: int, aug: bool = False, crop: bool = True) -> dict:
    """(N, 1, size, size) training slices: resized whole (no augmentation), or (aug) one seeded draw of the
    library's training augmentation (train_transform: random crop, rotation, flip, jitter)."""
    lab = acdc_labeled_names(root, labeled_patients=labeled)
    unl = acdc_splits(root)["train_slices"][len(lab) :]
    tf = train_transform(size, rgb=False, crop=crop) if aug else eval_transform(size)
    out = {}
    torch.manual_seed(12345)
    for k, names in (("labeled", lab), ("unlabeled", unl)):
        ds = ACDCSlices(root, names, tf, with_labels=False, verify=False)
        out[k] = torch.stack([ds[i]["image"].float() for i in range(len(ds))])
    return out


def path_bns(method) -> list[nn.Module]:
    "The BatchNorm modules that predict_logits calls."
    bns = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hit = set()
    hs = [m.register_forward_hook(lambda m, i, o: hit.add(id(m))) for m in bns]
    method.eval()
    with torch.no_grad():
        method.predict_logits(torch.zeros(2, method.model_cfg.in_channels, 96, 96))
    for h in hs:
        h.remove()
    return [m for m in bns if id(m) in hit], len(bns)


@torch.no_grad()
def recalibrate(method, bns, x: torch.Tensor):
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    method.eval()
    for m in bns:
        m.train()
    for b in balanced_batches(len(x)):
        method.predict_logits(x[b])
    method.eval()
    for m in bns:
        m.momentum = 0.1  # back to the default (eval does not read it)


def test_dice(t: Trainer) -> dict:
    r = t.evaluate_split("test", hd95=False).summary
    return {"dice": r["dice"], "dice_per_class": r["dice_per_class"], "dice_2d": r.get("dice_2d")}


def main():
    aug = sys.argv[1] == "--aug"  # supplementary: only (c) all training images, augmented, no (0)/(a)/(b)
    args = sys.argv[2:] if aug else sys.argv[1:]
    out = Path(args[0])
    runs = [Path(p) for p in args[1:]]
    torch.set_num_threads(1)
    cache = {}
    for run in runs:
        t0 = time.time()
        cfg = TrainConfig.load(run / "config.json")
        key = (cfg.data_root, cfg.labeled, cfg.preset, cfg.img_size, cfg.crop)
        if key not in cache:
            size = cfg.img_size or get_preset(cfg.preset).img_size
            data = build_data("acdc", cfg.data_root, size=size, labeled=int(cfg.labeled), crop=cfg.crop)
            cache[key] = (data, load_images(cfg.data_root, size, int(cfg.labeled), aug, cfg.crop))
        data, imgs = cache[key]
        t = Trainer.from_run(run, "best", device="cpu", data=data)
        saved = {k: v.clone() for k, v in t.method.state_dict().items()}
        bns, n_bn = path_bns(t.method)
        stored = json.loads((run / "metrics.json").read_text())["test"]["best"]
        rec = {
            "run": str(run),
            "source": run.parent.parent.name,
            "row": run.name.split("-l2-")[0][5:],
            "seed": cfg.seed,
            "method": cfg.method,
            "batch_norm": cfg.to_dict().get("batch_norm"),
            "stored_dice": stored["dice"],
            "n_bn_path": len(bns),
            "n_bn_all": n_bn,
            "n_labeled": len(imgs["labeled"]),
            "n_unlabeled": len(imgs["unlabeled"]),
        }
        sources = {
            "labeled": imgs["labeled"],
            "unlabeled": imgs["unlabeled"],
            "all": torch.cat([imgs["labeled"], imgs["unlabeled"]]),
        }
        if aug:
            sources = {"all_aug": sources["all"]}
        else:
            rec["saved"] = test_dice(t)
        for name, x in sources.items():
            t.method.load_state_dict(saved)
            recalibrate(t.method, bns, x)
            rec[name] = test_dice(t)
        rec["seconds"] = round(time.time() - t0, 1)
        print(
            json.dumps({k: rec[k] for k in ("row", "seed", "stored_dice", "seconds")}),
            {
                k: round(100 * rec[k]["dice"], 2)
                for k in ("saved", "labeled", "unlabeled", "all", "all_aug")
                if k in rec
            },
            flush=True,
        )
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
