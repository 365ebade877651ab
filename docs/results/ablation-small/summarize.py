"Tables of a grid.py grid: test Dice per row (mean ± std over seeds), paired differences, log terms."

import argparse, csv, json, math, re, sys
from pathlib import Path

import numpy as np

LOGGED = ("l_sup", "certain", "pl_acc", "l_c", "l_e")
NAME = re.compile(r"^acdc-(?P<tag>.+)-l(?P<labeled>[\d.]+)-s(?P<seed>\d+)$")


def read_log(run: Path, last: float = 0.25) -> dict:
    "Means over the last `last` share of log.csv of the terms that explain a run."
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    tail = rows[int(len(rows) * (1 - last)) :]
    out = {}
    for k in ("l_sup", "l_c", "l_e", "certain", "pl_acc"):
        v = [float(r[k]) for r in tail if r.get(k) not in (None, "")]
        out[k] = float(np.mean(v)) if v else math.nan
    return out


def collect(root: Path) -> list[dict]:
    "One row per finished run below ROOT/runs."
    rows = []
    for run in sorted((root / "runs").iterdir()):
        m = NAME.match(run.name)
        if not m or not (run / "metrics.json").is_file():
            continue
        met, cfg = (
            json.loads((run / "metrics.json").read_text()),
            json.loads((run / "config.json").read_text()),
        )
        row = dict(
            tag=m["tag"], seed=int(m["seed"]), labeled=float(m["labeled"]), iterations=cfg["iterations"]
        )
        for which in ("best", "last"):
            row[f"{which}_dice"] = 100 * met["test"][which]["dice"]
            per = met["test"][which]["dice_per_class"]
            row |= {f"{which}_{k}": 100 * v for k, v in per.items()}
        row["best_iteration"] = met["best_val"]["iteration"]
        with (run / "log.csv").open() as f:
            row["minutes"] = float(list(csv.DictReader(f))[-1]["seconds"]) / 60  # training wall time
        rows.append(row | read_log(run))
    return rows


def spread(v: np.ndarray, sign: str = "") -> str:
    "Mean ± sample standard deviation, or the one value and '(1 seed)'."
    return f"{v.mean():{sign}.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():{sign}.1f} (1 seed)"


def table(rows: list[dict], order: list[str], base: str = "sup", metric: str = "best_dice") -> str:
    "Markdown: per row the mean ± std over seeds, the seeds, and the paired difference to `base`."
    by = {(r["tag"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    cols = ["row", "Dice mean ± std", "per seed", f"Δ vs {base} mean ± std (per seed)", *LOGGED, "min"]
    head = "| " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * len(cols)]
    for tag in order:
        ss = [s for s in seeds if (tag, s) in by]
        if not ss:
            continue
        v = np.array([by[tag, s][metric] for s in ss])
        cell = spread(v)
        d = np.array([by[tag, s][metric] - by[base, s][metric] for s in ss if (base, s) in by])
        dcell = "" if tag == base or not len(d) else f"{spread(d, '+')} ({', '.join(f'{x:+.1f}' for x in d)})"
        runs = [by[tag, s] for s in ss]
        logs = [
            np.mean(x) if (x := [r[k] for r in runs if not math.isnan(r[k])]) else math.nan for k in LOGGED
        ]
        logs.append(np.mean([by[tag, s]["minutes"] for s in ss]))
        lcell = " | ".join("" if math.isnan(x) else f"{x:.2f}" for x in logs[:-1]) + f" | {logs[-1]:.0f}"
        lines.append(f"| {tag} | {cell} | {', '.join(f'{x:.1f}' for x in v)} | {dcell} | {lcell} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("roots", nargs="+", help="--out folders of grid.py (runs of one phantom and budget)")
    p.add_argument("--order", nargs="*", default=None, help="rows in this order (default: as found)")
    p.add_argument(
        "--metric", default="best_dice", help="best_dice (validation-best checkpoint) or last_dice"
    )
    p.add_argument("--base", default="sup", help="the row that the paired differences are taken against")
    p.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="only these seeds (default: every seed found)"
    )
    p.add_argument(
        "--csv", default=None, help="also write one row per run (Dice, per-class Dice, log terms) here"
    )
    a = p.parse_args(argv)
    rows = [r for root in a.roots for r in collect(Path(root)) if a.seeds is None or r["seed"] in a.seeds]
    order = a.order or list(dict.fromkeys(r["tag"] for r in rows))
    print(table(rows, order, base=a.base, metric=a.metric))
    if a.csv:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(
                sorted(
                    (r for r in rows if r["tag"] in order), key=lambda r: (order.index(r["tag"]), r["seed"])
                )
            )


if __name__ == "__main__":
    sys.exit(main())
