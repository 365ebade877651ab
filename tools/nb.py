"""Author notebooks as text and keep their saved outputs current.

    python tools/nb.py from-md SRC.md [...]   # Markdown (jupytext) -> nbs/SRC.ipynb, outputs kept if present
    python tools/nb.py to-md NB.ipynb [...]   # a notebook -> Markdown beside it, for editing in any editor
    python tools/nb.py run NB.ipynb [...]     # execute in place with default parameters, then nbdev-clean

The notebooks in nbs/ are the source of truth; Markdown copies are scratch and never committed.
"""

import os, subprocess, sys, tempfile, time
from pathlib import Path

import jupytext, nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "python3", "language": "python"}


def _finish(nb):
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    return nb


def from_md(src: Path):
    dst = ROOT / "nbs" / (src.stem + ".ipynb")
    nb = _finish(jupytext.read(src, fmt="md"))
    if dst.exists():  # unchanged cells keep their ids (stable diffs) and outputs (until the next run)
        old = {(c.cell_type, c.source): c for c in nbformat.read(dst, as_version=4).cells}
        for c in nb.cells:
            if (prev := old.get((c.cell_type, c.source))) is None:
                continue
            if "id" in prev:
                c["id"] = prev["id"]
            if c.cell_type == "code":
                c.outputs = prev.outputs
    nbformat.write(nb, dst)
    print(f"wrote {dst.relative_to(ROOT)}")


def to_md(nb_path: Path):
    dst = nb_path.with_suffix(".md")
    jupytext.write(jupytext.read(nb_path), dst, fmt="md")
    print(f"wrote {dst}")


def run(nb_path: Path, timeout: int = 900):
    nb = _finish(nbformat.read(nb_path, as_version=4))
    t = time.time()
    before = os.environ.get("TMPDIR")
    # notebooks write their artefacts, and their temporary folders, in a folder removed afterwards
    with tempfile.TemporaryDirectory() as cwd:
        os.environ["TMPDIR"] = cwd  # the kernel inherits it
        try:
            where = {"metadata": {"path": cwd}}
            NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=where).execute()
        finally:
            if before is None:
                os.environ.pop("TMPDIR")
            else:
                os.environ["TMPDIR"] = before
    nbformat.write(nb, nb_path)
    clean = Path(sys.executable).parent / "nbdev-clean"
    subprocess.run([clean, "--fname", str(nb_path)], check=True, cwd=ROOT)
    print(f"ran {nb_path.name} in {time.time() - t:.1f}s")


if __name__ == "__main__":
    cmd, *paths = sys.argv[1:]
    fn = {"from-md": from_md, "to-md": to_md, "run": run}[cmd]
    for p in paths:
        fn(Path(p).resolve())
