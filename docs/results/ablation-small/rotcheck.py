"Test Dice of a run's last.pt on test slices turned by k quarter turns (predictions turned back)."

import json, sys, torch
from pathlib import Path
from ucpcl.train import TrainConfig, Trainer
from ucpcl.rotation import rot90_batch

torch.set_num_threads(1)
run = Path(sys.argv[1])
d = json.loads((run / "config.json").read_text())
if d.get("rotation_input", "batch") is None:  # runs older than the switch: the reference's form
    d["rotation_input"] = "batch"
t = Trainer(TrainConfig(**d).replace(out=str(run)))
t.load(run / "last.pt", weights_only=True)
base = t.method.predict_logits
for k in range(4):

    def turned(x, k=k):
        kk = torch.full((x.shape[0],), k, dtype=torch.long)
        return rot90_batch(base(rot90_batch(x, kk)), (4 - kk) % 4)

    t.method.predict_logits = turned
    print(
        f"{run.name}: k={k} test Dice {t.evaluate_split('test', hd95=False).summary['dice']:.4f}", flush=True
    )
