"""README.md is generated from nbs/index.ipynb (tools/readme.py) and must be current; the overview's
equation table names functions that exist."""
import importlib, importlib.util, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ucpcl_readme", ROOT / "tools" / "readme.py")
readme = sys.modules["ucpcl_readme"] = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(readme)


def test_readme_is_current():
    bad = readme.stale()
    assert not bad, f"README.md is stale ({', '.join(bad)}): run `make readme` and commit README.md and docs/readme/"


def test_readme_images_exist_and_links_point_into_the_repository():
    text = (ROOT / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, "the README shows the method's figure"
    for src in images: assert (ROOT / src).is_file(), f"README.md shows {src}, which does not exist"
    for target in re.findall(r"\]\(([^)#]+\.ipynb)(?:#[^)]*)?\)", text):
        assert (ROOT / target).is_file(), f"README.md links {target}, which does not exist"


def test_the_readme_renderer_folds_and_relinks(tmp_path):
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[md("# T\n\nSee [a](01_a.ipynb#x), [b](https://e.org/b.ipynb) and [c](nbs/02_c.ipynb)."),
                                         code("#| hide\nsecret = 1"), code("#| code-fold: true\nshown = 2"), code("#| echo: false\nquiet = 3")])
    nbformat.write(nb, tmp_path / "index.ipynb")
    text, images = readme.render(tmp_path / "index.ipynb")
    assert "[a](nbs/01_a.ipynb#x)" in text and "(https://e.org/b.ipynb)" in text and "(nbs/02_c.ipynb)" in text
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
            try: obj = importlib.import_module(".".join(parts[:k])); break
            except ModuleNotFoundError: continue
        for attr in parts[k:]:
            assert hasattr(obj, attr), f"index.ipynb names {name}, but {'.'.join(parts[:k])} has no {attr}"
            obj = getattr(obj, attr)
        assert callable(obj), f"{name} is not a function or class"
