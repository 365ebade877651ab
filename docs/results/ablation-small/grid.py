"Train (resumably) a grid of method variants x seeds on one phantom and print a table of test Dice."

import argparse, functools, json, math, sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import ucpcl.data
import ucpcl.train
from ucpcl.compare import Grid, RunSpec, run_grid
from ucpcl.losses import consistency_weight, seg_loss
from ucpcl.baselines import batch_statistics
from ucpcl.method import UCPCL, Supervised, item_seed
from ucpcl.uncertainty import ThresholdSchedule, certain_pseudo_label
from ucpcl.models import UCPCLNet
from ucpcl.report import write_csv
from ucpcl.train import METHODS, PRESET_METHOD, TrainConfig


class UCPCLStopGrad(UCPCL):
    "Research variant (round 9): the Transformer decoder reads the encoder's features detached."

    def __init__(self, cfg, model_cfg):
        super().__init__(cfg, model_cfg)
        net = self.model  # l_sup's and l_con's Transformer terms train f_t only, not the shared encoder
        net.decode_transformer = lambda feats: UCPCLNet.decode_transformer(net, [f.detach() for f in feats])


def appearance(x: Tensor, seed: int) -> Tensor:
    "Round 19: a random gamma, contrast, brightness and noise per image of x (B, C, H, W) in [0, 1]."
    g = torch.Generator().manual_seed(seed)
    B = len(x)
    u = lambda lo, hi: (lo + (hi - lo) * torch.rand(B, 1, 1, 1, generator=g)).to(x)
    gamma, contrast, bright, sigma = torch.exp(u(-0.7, 0.7)), u(0.6, 1.4), u(-0.2, 0.2), u(0.0, 0.05)
    y = x.clamp(0, 1) ** gamma
    m = y.mean((1, 2, 3), keepdim=True)
    noise = torch.randn(x.shape, generator=g).to(x)
    return ((y - m) * contrast + m + bright + sigma * noise).clamp(0, 1)


def perturbed_logits(method, x: Tensor, iteration: int) -> Tensor:
    """The CNN decoder's logits of `appearance`'s copy of x (seeded by the run's seed and the iteration),
    batch norm on batch statistics with its running ones untouched: the perturbed pass of rounds 19 and 20."""
    xp = appearance(x, item_seed(method.cfg.seed, iteration, 1 << 22))
    with batch_statistics(method.model):
        return method.model.decode_cnn(method.model.encode(xp))


def pseudo_label_loss(
    logits: Tensor, target: Tensor, dice=False, balance=False, dice_form="linear"
) -> Tensor:
    """l_p of rounds 19 and 20: logits (B, C, H, W) toward the certain pseudo labels target (B, H, W; -1 =
    uncertain, left out): cross-entropy over the certain pixels, its mean over the classes present
    (`balance`), or l_sup's cross-entropy + Dice (`dice`); zero (with a gradient) while no pixel is
    certain."""
    if not (target >= 0).any():
        return logits.sum() * 0
    if dice:
        return seg_loss(logits, target, ignore_index=-1, dice_form=dice_form)
    if balance:
        ce = F.cross_entropy(logits, target, ignore_index=-1, reduction="none")
        return torch.stack([ce[target == c].mean() for c in target[target >= 0].unique()]).mean()
    return F.cross_entropy(logits, target, ignore_index=-1)


class UCPCLPerturbed(UCPCL):
    """Research variant (round 19): the method plus l_p, the CNN decoder on an appearance-perturbed copy of
    the unlabeled images, trained toward the certain pseudo labels of Eq. 7 (from the unperturbed pass,
    detached): cross-entropy over the certain pixels, or (`dice`) l_sup's cross-entropy + Dice with the
    uncertain pixels left out. Weighted by `weight` * the ramp of lambda_t; one more pass of the unlabeled
    images (encoder, CNN decoder), with batch norm's running statistics left as they are. log.csv's loss
    column includes w * l_p; the share of certain pixels is its `certain` column (same H, same p_c, p_t)."""

    weight, dice, _pass = 1.0, False, None
    balance = False  # round 20: each class's certain pixels weigh alike in l_p (the mean over classes)
    align = False  # round 20: align the pseudo labels' class shares with the labeled images' (see `aligned`)
    source = "mean"  # round 21: "cnn" labels by the CNN decoder alone (Eq. 7 with p_t = p_c), as `supp` does
    _prior = None  # (labeled, unlabeled) running class shares, for `align`

    def by_stream(self, fn, x):
        "The method's `by_stream`; the step's first call (the batch through the network) is kept for l_p."
        out = UCPCL.by_stream(self, fn, x)
        if self._pass is None:
            self._pass = (x, out)
        return out

    def training_step(self, batch, iteration):
        self._pass = None
        logs = UCPCL.training_step(self, batch, iteration)
        (x, o), self._pass, lb = self._pass, None, self.cfg.labeled_bs
        x = x[lb:]  # the unlabeled images as the pass saw them (turned, if turned)
        p_c, p_t = (t[lb:].detach().float().softmax(1) for t in (o.logits_c, o.logits_t))
        if self.source == "cnn":
            p_t = p_c
        H = self.threshold(iteration, self.cfg.iterations)
        if self.align:
            p_c = p_t = self.aligned((p_c + p_t) / 2, batch["label"][:lb])
        target = certain_pseudo_label(p_c, p_t, H)  # (B_u, H, W), -1 = uncertain
        logits = perturbed_logits(self, x, iteration)
        l_p = pseudo_label_loss(logits.float(), target, self.dice, self.balance, self.cfg.dice_form)
        w = consistency_weight(iteration, self.cfg.iterations, self.weight)
        logs["loss"] = logs["loss"] + w * l_p
        return logs

    def aligned(self, p: Tensor, y: Tensor, momentum: float = 0.99) -> Tensor:
        """Distribution alignment (round 20): p (B_u, C, H, W) times the ratio of the labeled images' class
        shares (y, the labeled batch's labels) to the unlabeled predictions' mean class shares, renormalised;
        both shares are running means over steps (`momentum`), so that a class that the network finds too
        rarely on the unlabeled images gets its probability raised before Eq. 7 takes the certain argmax.
        The running shares live in this object only: a resumed run starts them again from its first step."""
        C = p.shape[1]
        shares = torch.bincount(y[y >= 0].flatten(), minlength=C).float().to(p), p.mean((0, 2, 3))
        shares = tuple(s / s.sum().clamp_min(1e-12) for s in shares)
        if self._prior is None:
            self._prior = shares
        else:
            self._prior = tuple(momentum * a + (1 - momentum) * b for a, b in zip(self._prior, shares))
        ratio = (self._prior[0] / self._prior[1].clamp_min(1e-6)).view(1, C, 1, 1)
        q = p * ratio
        return q / q.sum(1, keepdim=True)


class SupPerturbed(Supervised):
    """Research variant (round 20): `sup` (its network, l_sup on the labeled images alone, batch norm's
    running statistics from them alone) plus l_p on the unlabeled images: their pseudo labels from the CNN
    decoder alone (Eq. 7 with p_c = p_t, no gradient), the same perturbation and weight as `UCPCLPerturbed`;
    both unlabeled passes use batch statistics and leave the running ones as `sup` has them."""

    uses_unlabeled = True
    weight, balance = 1.0, False
    # round 21: the clean pass of the unlabeled images updates batch norm's running statistics
    running = False

    def __init__(self, cfg, model_cfg):
        super().__init__(cfg, model_cfg)
        self.threshold = ThresholdSchedule(cfg.threshold_mode, cfg.threshold)

    def training_step(self, batch, iteration):
        (x, y), lb = (batch["image"], batch["label"]), self.cfg.labeled_bs
        logs = Supervised.training_step(self, {"image": x[:lb], "label": y[:lb]}, iteration)
        with torch.no_grad(), batch_statistics(self.model, enabled=not self.running):
            p = self.predict_logits(x[lb:]).float().softmax(1)
        target = certain_pseudo_label(p, p, self.threshold(iteration, self.cfg.iterations))
        logits = perturbed_logits(self, x[lb:], iteration)
        l_p = pseudo_label_loss(logits.float(), target, balance=self.balance, dice_form=self.cfg.dice_form)
        logs["loss"] = logs["loss"] + consistency_weight(iteration, self.cfg.iterations, self.weight) * l_p
        return logs


class SupAugmented(Supervised):
    """Research control (round 20): `SupPerturbed` with the labeled images in place of the unlabeled ones and
    their labels in place of the pseudo labels: l_sup + the weight's ramp x the cross-entropy of a perturbed
    copy of the labeled images (batch statistics, running ones untouched). The same batches as `supp` (the
    unlabeled images are drawn and not used), so that `supp` - `supaug` is what the unlabeled images add."""

    uses_unlabeled = True
    weight = 1.0

    def training_step(self, batch, iteration):
        (x, y), lb = (batch["image"], batch["label"]), self.cfg.labeled_bs
        logs = Supervised.training_step(self, {"image": x[:lb], "label": y[:lb]}, iteration)
        logits = perturbed_logits(self, x[:lb], iteration)
        l_a = F.cross_entropy(logits.float(), y[:lb])
        logs["loss"] = logs["loss"] + consistency_weight(iteration, self.cfg.iterations, self.weight) * l_a
        return logs


class UCPCLFastTransformer(UCPCL):
    """Research variant (round 22): the method with the Transformer decoder's loss gradients multiplied by
    `scale`, which under SGD is its learning rate times `scale` (weight decay unchanged). At the small preset
    f_t learns the small organs too slowly for Eq. 7 on the decoders' mean to keep them (finding 49)."""

    scale = 1.0

    def __init__(self, cfg, model_cfg):
        super().__init__(cfg, model_cfg)
        for p in self.model.transformer.parameters():
            p.register_hook(lambda g: g * self.scale)


def perturbed(
    weight: float, dice: bool = False, balance: bool = False, align: bool = False, source: str = "mean"
) -> type:
    "`UCPCLPerturbed` with l_p's final weight and form fixed, so that a METHODS name can hold it."
    fields = {"weight": weight, "dice": dice, "balance": balance, "align": align, "source": source}
    return type(f"UCPCLPerturbed{weight:g}", (UCPCLPerturbed,), fields)


METHODS |= {"ucpcl-sg": UCPCLStopGrad, "ucpcl-p1": perturbed(1.0), "ucpcl-pd1": perturbed(1.0, dice=True)}
METHODS |= {"ucpcl-pb1": perturbed(1.0, balance=True), "ucpcl-pa1": perturbed(1.0, align=True)}
METHODS |= {"ucpcl-pc1": perturbed(1.0, source="cnn")}
METHODS |= {
    f"ucpcl-t{k}": type(f"UCPCLFastTransformer{k}", (UCPCLFastTransformer,), {"scale": k}) for k in (3, 10)
}
# the same with l_p (round 19's term, the decoders' mean labels): the scale's __init__, UCPCLPerturbed's step
METHODS |= {"ucpcl-p1t10": type("UCPCLPerturbedFast", (UCPCLFastTransformer, perturbed(1.0)), {"scale": 10})}
METHODS |= {
    "sup-a1": SupAugmented,
    "sup-p1": SupPerturbed,
    "sup-pb1": type("SupPerturbedB", (SupPerturbed,), {"balance": True}),
    "sup-pr1": type("SupPerturbedR", (SupPerturbed,), {"running": True}),
}

# name -> (method, TrainConfig fields); "full" is the method with the TrainConfig in force
ROWS = {
    "sup": ("sup", {}),
    "full": ("ucpcl", {}),
    "norot": ("ucpcl", {"use_rot": False}),
    "rot-all": ("ucpcl", {"rotation_form": "all"}),
    "con": ("ucpcl", {"use_rot": False, "contrast": "none"}),
    "rot": ("ucpcl", {"use_con": False, "contrast": "none"}),
    "con-rot": ("ucpcl", {"contrast": "none"}),
    "csup": ("ucpcl", {"contrast": "labeled"}),
    "copy": ("ucpcl", {"rotation_input": "copy"}),
    "unl": ("ucpcl", {"rotation_input": "unlabeled"}),
    "cpseudo": ("ucpcl", {"contrast": "pseudo"}),
    "con-sg": ("ucpcl-sg", {"use_rot": False, "contrast": "none"}),  # round 9: f_t on detached features
    "norot-sg": ("ucpcl-sg", {"use_rot": False}),
    "con-splitbn": ("ucpcl", {"use_rot": False, "contrast": "none", "batch_norm": "per_stream"}),
    "norot-splitbn": ("ucpcl", {"use_rot": False, "batch_norm": "per_stream"}),
    "cps": ("cps", {}),  # baselines of Table 1: cross pseudo supervision, mean teacher
    "mt": ("mt", {}),
    "pert": ("ucpcl-p1", {}),  # round 19: the full method + l_p on appearance-perturbed unlabeled images
    "pertd": ("ucpcl-pd1", {}),  # l_p as cross-entropy + Dice over the certain pixels
    "pertb": ("ucpcl-pb1", {}),  # round 20: l_p's cross-entropy as the mean over the classes
    "perta": ("ucpcl-pa1", {}),  # round 20: pseudo labels after distribution alignment
    "supp": ("sup-p1", {}),  # round 20: `sup` + l_p (pseudo labels of its own CNN decoder)
    "suppb": ("sup-pb1", {}),  # the same, l_p's cross-entropy as the mean over the classes
    "supaug": ("sup-a1", {}),  # round 20: supp's control, a perturbed copy of the labeled images instead
    # round 21: l_p on the method without turns, batch norm per stream, one part of the method added at a time
    "ptd": ("ucpcl-p1", {"use_rot": False, "batch_norm": "per_stream", "use_con": False, "contrast": "none"}),
    "ptc": ("ucpcl-p1", {"use_rot": False, "batch_norm": "per_stream", "contrast": "none"}),
    "pertsep": ("ucpcl-p1", {"use_rot": False, "batch_norm": "per_stream"}),
    "pcsep": ("ucpcl-pc1", {"use_rot": False, "batch_norm": "per_stream"}),  # pertsep, CNN decoder's labels
    "ptdc": (
        "ucpcl-pc1",
        {"use_rot": False, "batch_norm": "per_stream", "use_con": False, "contrast": "none"},
    ),
    "suppr": ("sup-pr1", {}),  # supp, the unlabeled images' clean pass in batch norm's running statistics
    "t3": ("ucpcl-t3", {}),  # round 22: the full method, f_t's learning rate x 3
    "t10": ("ucpcl-t10", {}),  # ... x 10
    "pt10": ("ucpcl-p1t10", {}),  # pert (the full method + l_p) with f_t's learning rate x 10
    "pst10": ("ucpcl-p1t10", {"use_rot": False, "batch_norm": "per_stream"}),  # pertsep, likewise
    # round 23: the library's small preset (PRESET_METHOD["small"]: pst10's settings, l_p as `pseudo_weight`)
    "small": ("ucpcl", PRESET_METHOD["small"]),
}

# the rows above are variants of the paper's method: `preset_config` would put the small preset's settings
# under them (round 23 on), so the ucpcl rows get the paper's settings explicitly, as rounds 1-22 ran them
PAPER_METHOD = {k: getattr(TrainConfig(), k) for k in PRESET_METHOD["small"]}


def parse_row(text: str) -> tuple[str, str, dict]:
    "NAME, NAME:key=value,key=value (fields on top of the row NAME), or TAG@NAME:key=value,... to name it."
    tag, _, text = text.rpartition("@")
    name, _, extra = text.partition(":")
    method, fields = ROWS[name]
    fields = {**(PAPER_METHOD if issubclass(METHODS[method], UCPCL) else {}), **fields}
    for kv in filter(None, extra.split(",")):
        k, v = kv.split("=")
        try:
            fields[k] = json.loads(v)  # numbers, true, false
        except ValueError:
            fields[k] = v  # a word, e.g. contrast=none
    return tag or text.replace(":", "+").replace(",", "+").replace("=", ""), method, fields


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", nargs="+", default=["sup", "full"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--labeled", type=int, default=2)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch", type=int, nargs=2, default=[8, 4], metavar=("BATCH", "LABELED"))
    p.add_argument("--eval-every", type=int, default=None, help="default: iterations // 4, as the demo")
    p.add_argument(
        "--jitter",
        type=float,
        default=None,
        help="round 13: brightness and contrast jitter of the training augmentation for every row "
        "(default: the library's, 0.2); a research switch, not a TrainConfig field",
    )
    p.add_argument(
        "--average",
        type=float,
        default=None,
        help="round 16: validate (and keep as best.pt) a moving average of the weights with this decay, "
        "for every row: TrainConfig's weight_average (rounds 16 and 17 ran it as a patch of the trainer "
        "with the same arithmetic)",
    )
    a = p.parse_args(argv)
    if a.jitter is not None:  # the training sets are built in this process, from ucpcl.data's global
        ucpcl.data.train_transform = functools.partial(ucpcl.data.train_transform, jitter=a.jitter)
    specs = [RunSpec(tag, m, f) for tag, m, f in map(parse_row, a.rows)]
    ev = a.eval_every or max(a.iterations // 4, 1)
    kw = dict(batch_size=a.batch[0], labeled_bs=a.batch[1], eval_every=ev, save_every=a.iterations)
    kw |= {} if a.average is None else {"weight_average": a.average}
    grid = Grid([a.labeled], a.seeds, "acdc", a.data_root, a.out, "small", a.iterations, "cpu", overrides=kw)
    rows = run_grid(specs, grid)
    write_csv(rows, Path(a.out) / "runs.csv")
    by = {(r["tag"], r["seed"]): r for r in rows}
    print(f"| row | best Dice mean ± std | last Dice mean ± std | per seed (best) | {len(a.seeds)} seeds |")
    for s in specs:
        b = np.array([100 * by[s.tag, k]["best_dice"] for k in a.seeds])
        la = np.array([100 * by[s.tag, k]["last_dice"] for k in a.seeds])
        sd = lambda v: v.std(ddof=1) if len(v) > 1 else math.nan
        cells = " ".join(f"{v:.1f}" for v in b)
        print(f"| {s.tag} | {b.mean():.2f} ± {sd(b):.2f} | {la.mean():.2f} ± {sd(la):.2f} | {cells} |")


if __name__ == "__main__":
    sys.exit(main())
