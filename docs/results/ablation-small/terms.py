"Means of the loss terms and mask statistics of log.csv over windows of iterations, for the runs given."

import csv, sys
import numpy as np

K = ["l_sup", "l_con", "l_c", "l_e", "certain", "pl_acc"]
for run in sys.argv[1:]:
    rows = list(csv.DictReader(open(f"{run}/log.csv")))
    n = int(rows[-1]["iteration"]) + 1
    print(run.split("/")[-2] + "/" + run.split("/")[-1])
    for lo, hi in [(0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01)]:
        w = [r for r in rows if lo * n <= int(r["iteration"]) < hi * n]
        vals = []
        for k in K:
            v = [float(r[k]) for r in w if r.get(k) not in (None, "")]
            vals.append(f"{k} {np.mean(v):6.3f}" if v else f"{k}    -  ")
        print(f"  it {int(lo * n):4d}-{min(int(hi * n), n):4d}: " + "  ".join(vals))
