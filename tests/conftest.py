import shutil, sys, tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers (nbrun) by name

# measured: the suite's temporary folders (training runs with checkpoints, notebook runs) peaked at 1.5 GiB
# (1,574 MiB on a fresh clone) while module-shared folders stayed to the end; about 1.2 GB since `module_tmp`
# (free space sampled every 5 s during a full run, 2026-12-03)
NEEDS_GIB = 2.0


def disk_note(free_bytes: int, where: str) -> str:
    "The header line on the temporary disk; a warning, with the fix, when it is too small for the suite."
    free = free_bytes / 2**30
    if free >= NEEDS_GIB:
        return f"temporary folders: {where} ({free:.1f} GiB free)"
    return (
        f"WARNING: only {free:.1f} GiB free in {where}; the test suite needs about {NEEDS_GIB:.0f} GiB "
        f"there: free some space, or point TMPDIR (or pytest --basetemp) at a larger disk"
    )


def pytest_report_header(config):
    where = str(config.option.basetemp or tempfile.gettempdir())
    probe = Path(where)
    while not probe.exists():
        probe = probe.parent
    return disk_note(shutil.disk_usage(probe).free, where)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Path:
    """A folder for the files one test module shares (phantoms, run folders with checkpoints), removed
    once the module's tests are done: the suite holds one module's files at a time, not all until it ends."""
    d = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def subdir(parent: Path, name: str) -> Path:
    "parent/name, made."
    (parent / name).mkdir(parents=True, exist_ok=True)
    return parent / name
