"""Run a notebook headlessly with papermill, the way the test suite and CI do.

A failure names the notebook, the failing cell (index and first lines) and the error, with
the traceback stripped of terminal colours, so that a red CI line says where to look.
"""

from __future__ import annotations
import os, re, time
from pathlib import Path

import nbformat
import papermill as pm
from papermill.exceptions import PapermillExecutionError

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
KERNEL = "python3"  # explicit: never whatever kernel the notebook metadata happens to name
CELL_TIMEOUT = int(os.environ.get("UCPCL_CELL_TIMEOUT", 300))  # seconds; a hang fails instead of stalling CI
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NotebookFailed(Exception):
    "A notebook raised or timed out; the message names the notebook and the cell."


def notebooks() -> list[Path]:
    "Every notebook of the project, in reading order (scratch notebooks starting with `_` excluded)."
    return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith("_"))


def has_parameters_cell(nb_path: Path) -> bool:
    nb = nbformat.read(nb_path, as_version=4)
    return any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


def _cell_head(source: str, n: int = 6) -> str:
    lines = source.splitlines()
    return "\n".join(lines[:n] + (["..."] if len(lines) > n else []))


def run_notebook(
    nb_path: Path, workdir: Path, parameters: dict | None = None, cell_timeout: int = CELL_TIMEOUT
) -> tuple[Path, float]:
    "Execute `nb_path` in `workdir` (IN_TEST=1, TMPDIR in it); return the executed copy and the wall time."
    nb_path, workdir = Path(nb_path), Path(workdir)
    if parameters and not has_parameters_cell(nb_path):
        raise ValueError(f"{nb_path.name} has no cell tagged 'parameters' but was given {sorted(parameters)}")
    out = workdir / nb_path.name
    scratch = workdir / "tmp"
    scratch.mkdir(exist_ok=True)
    env_before = {k: os.environ.get(k) for k in ("IN_TEST", "TMPDIR")}
    os.environ["IN_TEST"] = "1"  # the kernel inherits it: notebooks shrink their loops
    os.environ["TMPDIR"] = str(scratch)  # and its temporary folders land in workdir, removed with it
    t = time.time()
    try:
        pm.execute_notebook(
            nb_path,
            out,
            parameters=parameters or {},
            kernel_name=KERNEL,
            cwd=workdir,
            execution_timeout=cell_timeout,
            progress_bar=False,
            log_output=False,
            request_save_on_cell_execute=False,
        )
    except PapermillExecutionError as e:
        tb = _ANSI.sub("", "\n".join(e.traceback[-12:]))
        raise NotebookFailed(
            f"{nb_path.name}: cell {e.cell_index} raised {e.ename}: {_ANSI.sub('', e.evalue)}\n"
            f"--- cell {e.cell_index} ---\n{_cell_head(e.source)}\n--- traceback ---\n{tb}"
        ) from None
    except Exception as e:  # timeouts and dead kernels come from nbclient, not papermill
        cell = _failing_cell(out)
        raise NotebookFailed(
            f"{nb_path.name}: {type(e).__name__}: {_ANSI.sub('', str(e))[:2000]}"
            + (f"\n--- cell {cell[0]} ---\n{_cell_head(cell[1])}" if cell else "")
        ) from None
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, time.time() - t


def _failing_cell(out: Path):
    "(index, source) of the cell that papermill marked as running when execution stopped."
    if not out.exists():
        return None
    nb = nbformat.read(out, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.metadata.get("papermill", {}).get("status") == "running":
            return i, c.source
    return None
