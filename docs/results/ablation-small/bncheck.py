"Test Dice of a run's last.pt: batch norm as saved vs its statistics recomputed on upright training images."

import json, sys, torch
from pathlib import Path
from ucpcl.train import TrainConfig, Trainer

torch.set_num_threads(1)
run = Path(sys.argv[1])
d = json.loads((run / "config.json").read_text())
if d.get("rotation_input", "batch") is None:  # runs older than the switch: the reference's form
    d["rotation_input"] = "batch"
cfg = TrainConfig(**d).replace(out=str(run))
t = Trainer(cfg)
t.load(run / "last.pt", weights_only=True)
r0 = t.evaluate_split("test", hd95=False).summary["dice"]
# recompute BN running stats: cumulative average over upright, augmented training images
m = t.method
for mod in m.modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.reset_running_stats()
        mod.momentum = None
m.train()
g = torch.Generator().manual_seed(0)
ds = t.data.train
with torch.no_grad():
    for b in range(20):
        idx = torch.randint(0, len(ds), (8,), generator=g).tolist()
        x = torch.stack([ds[i]["image"] for i in idx])
        m.predict_logits(x)
r1 = t.evaluate_split("test", hd95=False).summary["dice"]
print(f"{run.name}: test Dice last.pt {r0:.4f}; with BN stats recomputed on upright images {r1:.4f}")
