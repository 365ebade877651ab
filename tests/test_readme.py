"""README.md is generated from nbs/index.ipynb (tools/readme.py) and must be current; the overview's
equation table names functions that exist."""

import ast, csv, importlib, importlib.util, itertools, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ucpcl_readme", ROOT / "tools" / "readme.py")
readme = sys.modules["ucpcl_readme"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme)


def test_readme_is_current():
    bad = readme.stale()
    assert not bad, (
        f"README.md is stale ({', '.join(bad)}): run `make readme` and commit README.md and docs/readme/"
    )


def test_readme_images_exist_and_links_point_into_the_repository():
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, "the README shows the method's figure"
    for src in images:
        assert (ROOT / src).is_file(), f"README.md shows {src}, which does not exist"
    for target in re.findall(r"\]\(([^)#]+\.ipynb)(?:#[^)]*)?\)", text):
        assert (ROOT / target).is_file(), f"README.md links {target}, which does not exist"


def test_the_readme_renderer_folds_and_relinks(tmp_path):
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(
        cells=[
            md("# T\n\nSee [a](01_a.ipynb#x), [b](https://e.org/b.ipynb) and [c](nbs/02_c.ipynb)."),
            code("#| hide\nsecret = 1"),
            code("#| code-fold: true\nshown = 2"),
            code("#| echo: false\nquiet = 3"),
        ]
    )
    nbformat.write(nb, tmp_path / "index.ipynb")
    text, images = readme.render(tmp_path / "index.ipynb")
    assert (
        "[a](nbs/01_a.ipynb#x)" in text and "(https://e.org/b.ipynb)" in text and "(nbs/02_c.ipynb)" in text
    )
    assert "secret" not in text and "quiet" not in text and images == {}
    assert "<details>\n<summary>Code</summary>\n\n```python\nshown = 2\n```\n\n</details>" in text


def _equation_table() -> str:
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and "Implemented by" in c.source]
    assert len(cells) == 1, "index.ipynb has one table of the equations and the code that implements them"
    return cells[0]


def test_every_equation_of_the_paper_is_in_the_table():
    rows = re.findall(r"^\|\s*(\d+)\s*\|", _equation_table(), flags=re.M)
    assert [int(r) for r in rows] == list(range(1, 13))


def test_every_function_the_table_names_exists():
    names = re.findall(r"`(ucpcl(?:\.\w+)+)`", _equation_table())
    assert len(names) >= 12
    for name in names:
        parts = name.split(".")
        for k in range(len(parts), 1, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:k]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[k:]:
            assert hasattr(obj, attr), f"index.ipynb names {name}, but {'.'.join(parts[:k])} has no {attr}"
            obj = getattr(obj, attr)
        assert callable(obj), f"{name} is not a function or class"


def _table_after(marker: str) -> list[list[str]]:
    "The rows (cells stripped, header and rule dropped) of the first Markdown table after `marker`."
    nb = nbformat.read(ROOT / "nbs" / "index.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert marker in text, f"index.ipynb has no {marker!r}"
    lines = text[text.index(marker) :].splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("|"))
    table = [l for l in itertools.takewhile(lambda l: l.startswith("|"), lines[start:])]
    return [[c.strip() for c in l.strip("|").split("|")] for l in table[2:]]


def test_the_demo_figures_in_the_overview_are_the_committed_report():
    rows = {r[0]: r for r in _table_after("**The demo.**")}
    assert set(rows) == {"0", "1"}, "the overview reports the demo for seeds 0 and 1"
    for seed, row in rows.items():
        runs = {
            r["method"]: r
            for r in csv.DictReader(open(ROOT / "docs" / "results" / "demo" / f"seed{seed}" / "results.csv"))
        }
        for col, method in ((1, "sup"), (2, "ucpcl")):
            r = runs[method]
            assert row[col] == f"{100 * float(r['best_dice']):.2f} / {100 * float(r['best_jaccard']):.2f}", (
                seed,
                method,
            )


def test_the_phantom_table_in_the_overview_is_the_committed_one():
    names = {"Supervised only": "-", "UGPCL (ucpcl)": "Ours"}
    committed = {
        r["Method"]: r for r in csv.DictReader(open(ROOT / "docs" / "results" / "phantom-table1.csv"))
    }
    rows = _table_after("**Table 1 on the phantom.**")
    assert len(rows) == len(committed) == 8
    for row in rows:
        r = committed[names.get(row[0], row[0])]
        for col, l in ((1, "l2"), (2, "l4")):
            assert row[col] == f"{float(r[f'dice_{l}']):.2f} ± {float(r[f'dice_{l}_std']):.2f}", (row[0], l)


def test_the_open_choices_in_the_overview_are_the_trainers_defaults():
    "Each `field=value` in the last column of 'What the paper leaves open' is TrainConfig's default."
    from ucpcl.train import TrainConfig

    rows = _table_after("## What the paper leaves open")
    settings = [s for row in rows for s in re.findall(r"`(\w+)=([^`]+)`", row[-1])]
    assert len(settings) >= 10, "the table names a TrainConfig field and its default in every row"
    defaults = TrainConfig()
    for name, text in settings:
        assert hasattr(defaults, name), f"index.ipynb names TrainConfig.{name}, which does not exist"
        value, default = ast.literal_eval(text), getattr(defaults, name)
        if isinstance(default, float):
            assert round(default, 4) == value, f"{name}: the table says {value}, TrainConfig has {default}"
        else:
            assert default == value, f"{name}: the table says {value!r}, TrainConfig has {default!r}"
