"""Check that the library and the notebooks agree, without touching the working tree.

1. `nbdev-export` run on a copy of the project must reproduce `ucpcl/` byte for byte.
2. `nbdev-clean` run on a copy of `nbs/` must leave every notebook unchanged.

On failure it names each file that differs and the command that fixes it (`make export`).
"""

import filecmp, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _copy_project(dst: Path):
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*_files")
    shutil.copytree(ROOT / "nbs", dst / "nbs", ignore=ignore, symlinks=True)
    shutil.copytree(ROOT / "ucpcl", dst / "ucpcl", ignore=ignore)


def _diff_trees(a: Path, b: Path, pattern: str) -> list[str]:
    "Relative paths of files matching `pattern` that differ, or exist on one side only."
    fa = {p.relative_to(a) for p in a.rglob(pattern) if "__pycache__" not in p.parts}
    fb = {p.relative_to(b) for p in b.rglob(pattern) if "__pycache__" not in p.parts}
    bad = sorted(str(p) for p in fa ^ fb)
    bad += sorted(str(p) for p in fa & fb if not filecmp.cmp(a / p, b / p, shallow=False))
    return bad


def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{r.stdout}\n{r.stderr}")


def check_export() -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        _copy_project(d)
        _run([BIN / "nbdev-export"], d)
        return [f"ucpcl/{p}" for p in _diff_trees(ROOT / "ucpcl", d / "ucpcl", "*.py")]


def check_clean() -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        _copy_project(d)
        _run([BIN / "nbdev-clean"], d)
        return [f"nbs/{p}" for p in _diff_trees(ROOT / "nbs", d / "nbs", "*.ipynb")]


def main():
    ok = True
    if stale := check_export():
        ok = False
        print("nbdev-export would change the library (ucpcl/ is not what the notebooks say):")
        print("".join(f"  {p}\n" for p in stale), end="")
    if dirty := check_clean():
        ok = False
        print("These notebooks are not clean (nbdev-clean would change them):")
        print("".join(f"  {p}\n" for p in dirty), end="")
    if not ok:
        sys.exit("Fix: run `make export` (nbdev-export + nbdev-clean), review, commit.")
    print("ok: ucpcl/ matches nbdev-export, notebooks are clean")


if __name__ == "__main__":
    main()
