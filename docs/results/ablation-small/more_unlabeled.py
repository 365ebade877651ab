"""Round 14: a phantom with more unlabeled training patients, its labeled, validation and test patients kept.

BASE is a phantom written with `write_phantom(kind, BASE, num_patients=(20, 20, 40))`; MORE is the same kind
and seed written with more patients, e.g. `num_patients=(130, 1, 1)`. A phantom's patient i is drawn from its
seed and i alone, so MORE's patients 1-80 are BASE's, and its later ones are new. OUT gets BASE's lists with
the first `--extra` of MORE's patients that BASE lacks appended to train.list and train_slices.list (so the
labeled patients, the first in list order, stay BASE's), and links to the files of both.

    python more_unlabeled.py data/cardiac-big data/cardiac-130 data/cardiac-u68 --extra 50
"""

import argparse, json
from pathlib import Path

from ucpcl.data import acdc_patient, read_list as lines, sha256_file as digest


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path)
    p.add_argument("more", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--extra", type=int, required=True, help="training patients to add (unlabeled)")
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out} exists; remove it or choose another OUT")
    params = [json.loads((d / "PHANTOM.json").read_text())["params"] for d in (a.base, a.more)]
    base, more = ({k: v for k, v in p.items() if k != "num_patients"} for p in params)
    if base != more:
        raise SystemExit(
            f"{a.base} and {a.more} are not the same phantom (kind, seed, size...): {base}, {more}"
        )
    held = {acdc_patient(n) for k in ("train", "val", "test") for n in lines(a.base / f"{k}.list")}
    new = [n for n in lines(a.more / "train.list") if acdc_patient(n) not in held]
    patients = list(dict.fromkeys(acdc_patient(n) for n in new))[: a.extra]
    if len(patients) < a.extra:
        why = f"{a.more} has {len(patients)} training patients that {a.base} lacks; asked for {a.extra}"
        raise SystemExit(why)
    # the same patient in both phantoms must be the same volume: check every volume the two share
    shared = [n for n in lines(a.more / "train.list") if acdc_patient(n) in held]
    for n in shared:
        if digest(a.base / "data" / f"{n}.h5") != digest(a.more / "data" / f"{n}.h5"):
            raise SystemExit(f"{n}.h5 differs between {a.base} and {a.more}: not the same phantom")
    (a.out / "data" / "slices").mkdir(parents=True)
    for src in (a.base, a.more):
        for f in [*(src / "data").glob("*.h5"), *(src / "data" / "slices").glob("*.h5")]:
            link = a.out / f.relative_to(src)
            if not link.exists():
                link.symlink_to(f.resolve())
    keep = lambda names: [n for n in names if acdc_patient(n) in patients]
    for k in ("train", "train_slices"):
        names = lines(a.base / f"{k}.list") + keep(lines(a.more / f"{k}.list"))
        (a.out / f"{k}.list").write_text("".join(n + "\n" for n in names))
    for k in ("val", "test"):
        (a.out / f"{k}.list").write_text((a.base / f"{k}.list").read_text())
    meta = json.loads((a.base / "PHANTOM.json").read_text())
    meta["params"]["num_patients"][0] += a.extra
    meta["composed"] = dict(base=str(a.base), more=str(a.more), extra=patients, checked_shared=len(shared))
    (a.out / "PHANTOM.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"{a.out}: {len(held)} patients of {a.base}, {len(patients)} more, {len(shared)} shared volumes equal"
    )


if __name__ == "__main__":
    main()
