"""The project's own machinery: the nbdev and papermill traps, the environment, the README."""

import ast, os, subprocess, sys, time, tomllib
from pathlib import Path

import nbformat
import pytest
from nbrun import KERNEL, ROOT, NotebookFailed, has_parameters_cell, notebooks, run_notebook

BIN = Path(sys.executable).parent


def _nb(*sources, tags=None, **meta):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    if tags:
        nb.cells[0].metadata["tags"] = tags
    nb.metadata.update(meta)
    return nb


def _cfg():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["nbdev"]


def test_parameters_tag_and_widget_state_survive_nbdev_clean(tmp_path):
    nb = _nb(
        "x = 1",
        "print(x)",
        tags=["parameters"],
        widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}},
    )
    nb.cells[1].execution_count = 7
    nb.cells[1].metadata["collapsed"] = True
    f = tmp_path / "t.ipynb"
    nbformat.write(nb, f)
    subprocess.run([BIN / "nbdev-clean", "--fname", str(f)], cwd=ROOT, check=True, capture_output=True)
    out = nbformat.read(f, as_version=4)
    assert out.cells[0].metadata.get("tags") == ["parameters"]
    assert "widgets" in out.metadata
    assert out.cells[1].execution_count is None and "collapsed" not in out.cells[1].metadata


def test_a_raising_notebook_names_the_notebook_and_cell(tmp_path):
    f = tmp_path / "broken.ipynb"
    nbformat.write(_nb("a = 1", "raise ValueError('boom in the second cell')"), f)
    (tmp_path / "out").mkdir()
    with pytest.raises(NotebookFailed) as e:
        run_notebook(f, tmp_path / "out")
    msg = str(e.value)
    assert "broken.ipynb: cell 1 raised ValueError: boom in the second cell" in msg
    assert "raise ValueError" in msg and "\x1b[" not in msg


def test_a_hanging_cell_times_out_instead_of_stalling(tmp_path):
    f = tmp_path / "hang.ipynb"
    nbformat.write(_nb("import time", "time.sleep(120)"), f)
    (tmp_path / "out").mkdir()
    t = time.time()
    with pytest.raises(NotebookFailed) as e:
        run_notebook(f, tmp_path / "out", cell_timeout=3)
    assert time.time() - t < 60
    assert "hang.ipynb" in str(e.value) and "time.sleep(120)" in str(e.value)


def test_kernel_is_explicit_and_is_this_environment(tmp_path):
    "A notebook naming a kernel that does not exist still runs, in this interpreter, with IN_TEST set."
    f = tmp_path / "k.ipynb"
    nb = _nb(
        "import sys, os; print(sys.executable); print(os.environ['IN_TEST'])",
        kernelspec={"name": "no-such-kernel", "display_name": "x", "language": "python"},
    )
    nbformat.write(nb, f)
    (tmp_path / "out").mkdir()
    out, _ = run_notebook(f, tmp_path / "out")
    text = nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].split()
    assert Path(text[0]).resolve().parent == Path(sys.executable).resolve().parent and text[1] == "1"
    assert KERNEL == "python3"


def test_a_notebook_run_keeps_its_temporary_folders_inside_its_workdir(tmp_path):
    "Notebooks make run folders in `scratch()` folders: under the test suite they land in the workdir."
    f = tmp_path / "s.ipynb"
    (tmp_path / "out").mkdir()
    nbformat.write(
        _nb("from ucpcl.core import scratch; d = scratch(); (d / 'w.pt').write_bytes(b'0'); print(d)"), f
    )
    out, _ = run_notebook(f, tmp_path / "out")
    made = Path(nbformat.read(out, as_version=4).cells[0].outputs[0]["text"].strip())
    assert (
        made.is_relative_to(tmp_path / "out") and not made.exists()
    )  # inside the workdir, and gone with the kernel
    assert os.environ.get("TMPDIR") != str(tmp_path / "out" / "tmp")  # the runner put TMPDIR back


def test_notebooks_make_temporary_folders_with_scratch():
    "`tempfile.mkdtemp` folders outlive the kernel: a notebook left ~450 MB of checkpoints in /tmp per run."
    offenders = [
        p.name
        for p in notebooks()
        if "mkdtemp(" in "".join(c.source for c in nbformat.read(p, as_version=4).cells)
    ]
    assert not offenders, (
        f"{offenders} call tempfile.mkdtemp: use ucpcl.core.scratch(), removed when the kernel exits"
    )


def _top_level_names(source: str) -> tuple[set, set]:
    "(names assigned, names defined by def/class/import) at the top level of a cell; IPython magics skipped."
    code = "\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))
    assigned, defined = set(), set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                assigned |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return assigned, defined


@pytest.mark.parametrize("nb", [p for p in notebooks() if has_parameters_cell(p)], ids=lambda p: p.stem)
def test_no_papermill_parameter_is_shadowed_by_a_later_definition(nb):
    "A parameter redefined later by a def/class/import would ignore the value papermill passed."
    cells = [c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
    i = next(k for k, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    params = _top_level_names(cells[i].source)[0]
    clashes = {
        name: k for k, c in enumerate(cells) if k > i for name in _top_level_names(c.source)[1] & params
    }
    at = sorted(set(clashes.values()))
    where = f"{sorted(clashes)} redefined by a later def, class or import (code cells {at})"
    assert not clashes, f"{nb.name}: parameter(s) {where}: rename the parameter"


def test_parameters_given_to_a_notebook_without_a_parameters_cell_are_an_error(tmp_path):
    f = tmp_path / "p.ipynb"
    nbformat.write(_nb("x = 1"), f)
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        run_notebook(f, tmp_path, {"x": 2})


def test_config_keeps_papermill_and_widget_metadata_and_skips_flagged_cells():
    cfg = _cfg()
    assert cfg["allowed_cell_metadata_keys"] == ["tags"] and cfg["allowed_metadata_keys"] == ["widgets"]
    assert {"slow", "gpu"} <= set(cfg["tst_flags"].split())


def test_flagged_cells_are_skipped_by_nbdev_test(tmp_path):
    "A `#| gpu` cell is left out by nbdev-test (its flag is in tst_flags); papermill runs it, small."
    from nbdev.test import nb_test_cells

    f = tmp_path / "flags.ipynb"
    nbformat.write(_nb("a = 1", "#| gpu\nb = 2", "#| slow\nc = 3"), f)
    kept = nb_test_cells(f, skip_flags=_cfg()["tst_flags"].split())
    assert [c.source for c in kept] == ["a = 1"]


def test_every_notebook_is_in_reading_order_with_one_default_exp():
    names = [p.name for p in notebooks()]
    assert names[0] == "00_core.ipynb" and names == sorted(names)
    for p in notebooks():
        nb = nbformat.read(p, as_version=4)
        exps = [
            c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("#| default_exp")
        ]
        assert len(exps) <= 1, f"{p.name} has {len(exps)} default_exp cells"
        assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, f"{p.name}: kernelspec is not python3"


def test_existing_environment_is_not_reinstalled():
    """`make` installs once. nbdev-export rewrites pyproject.toml with the same text (a newer time, the same
    bytes); that must not reinstall the environment, and afterwards `make` has nothing to do."""
    venv = ROOT / ".venv"
    if not (venv / ".ucpcl-installed").exists() or not (venv / ".pyproject.installed").exists():
        pytest.skip("environment not created by make")
    pyproject = ROOT / "pyproject.toml"
    newer = (venv / ".ucpcl-installed").stat().st_mtime + 0.01
    os.utime(pyproject, (newer, newer))  # as nbdev-export leaves it
    time.sleep(0.05)  # so that the stamp make touches is newer still
    r = subprocess.run(["make", "env"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "pip install" not in r.stdout + r.stderr, f"make reinstalled the environment:\n{r.stdout}"
    assert "nothing to install" in r.stdout
    r = subprocess.run(["make", "-q", ".venv/.ucpcl-installed"], cwd=ROOT)
    assert r.returncode == 0, "make would still reinstall the environment although it exists"


def test_the_header_warns_when_the_temporary_disk_is_too_small():
    from conftest import disk_note

    assert disk_note(50 * 2**30, "/tmp") == "temporary folders: /tmp (50.0 GiB free)"
    low = disk_note(300 * 2**20, "/tmp")
    assert low.startswith("WARNING: only 0.3 GiB free in /tmp") and "point TMPDIR" in low
