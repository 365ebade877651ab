"""The documentation site: `_quarto.yml` names every notebook, nbdev reads it, and the offline build
(tools/site.py) gives every notebook a page in the sidebar's order, with its title, figures and
typeset math, links that resolve, and a page that a real browser loads without console errors."""

import html, importlib.util, os, re, shutil, struct, subprocess, sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
import yaml
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
_spec = importlib.util.spec_from_file_location("ucpcl_site", ROOT / "tools" / "site.py")
site = sys.modules["ucpcl_site"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(site)


def _cfg():
    return site.load_config(ROOT / "_quarto.yml")


def _soup(p: Path) -> BeautifulSoup:
    return BeautifulSoup(p.read_text(), "html.parser")


_SKIP = re.compile(r"<(pre|code|script|style|annotation)\b.*?</\1>", re.S)


def _visible_text(soup) -> str:
    "Page text outside code, scripts and KaTeX's TeX annotations: where a raw `$$` would mean untypeset math."
    return html.unescape(re.sub(r"<[^>]+>", " ", _SKIP.sub(" ", str(soup))))


# --- the configuration -------------------------------------------------------------------------


def test_quarto_yml_parses_and_names_exactly_the_notebooks():
    cfg = _cfg()
    assert cfg["project"]["type"] == "website" and cfg["project"]["output-dir"] == "_docs"
    files = site.sidebar_files(cfg)
    assert files[0] == "index.ipynb", "the overview comes first"
    assert len(files) == len(set(files)), f"named twice: {sorted({f for f in files if files.count(f) > 1})}"
    missing = [f for f in files if not (ROOT / "nbs" / f).exists()]
    assert not missing, f"_quarto.yml names notebooks that are not in nbs/: {missing}"
    unnamed = [p.name for p in site.notebooks(ROOT / "nbs") if p.name not in files]
    assert not unnamed, f"add these notebooks to the sidebar in _quarto.yml: {unnamed}"


def test_the_site_config_has_math_search_folding_and_the_citation():
    cfg = _cfg()
    assert cfg["format"]["html"]["html-math-method"] == "katex"
    assert cfg["website"]["navbar"]["search"] is True
    footer = " ".join(str(v) for v in cfg["website"]["page-footer"].values())
    assert "Uncertainty-Guided Pixel Contrastive Learning" in footer and "IJCAI 2022" in footer
    sections = [s for s, _ in site.sidebar_sections(cfg) if s]
    assert sections[:4] == ["The method", "Models", "Data", "Training"], sections


def test_nbdev_docs_would_read_the_top_level_config(tmp_path, monkeypatch):
    "nbs/_quarto.yml is a link to ../_quarto.yml; nbdev keeps it, stages its content and writes no sidebar of its own."
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()
    from nbdev.config import get_config
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import _proc_file

    (tmp_path / "nbs").mkdir()
    shutil.copy2(ROOT / "pyproject.toml", tmp_path)
    shutil.copy2(ROOT / "_quarto.yml", tmp_path)
    (tmp_path / "nbs" / "_quarto.yml").symlink_to("../_quarto.yml")
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T")]),
        tmp_path / "nbs" / "index.ipynb",
    )
    monkeypatch.chdir(tmp_path)
    assert get_config().custom_sidebar is True, (
        "pyproject.toml must set custom_sidebar = true under [tool.nbdev]"
    )
    refresh_quarto_yml()  # what nbdev-docs runs first: it must leave our file alone
    nbdev_sidebar.__wrapped__()
    assert (tmp_path / "nbs" / "_quarto.yml").is_symlink()
    assert not (tmp_path / "nbs" / "sidebar.yml").exists()
    cache = tmp_path / "_proc"
    cache.mkdir()
    _proc_file(tmp_path / "nbs" / "_quarto.yml", cache, tmp_path / "nbs")  # how nbdev stages it for Quarto
    assert (cache / "_quarto.yml").read_text() == (ROOT / "_quarto.yml").read_text()


def _nbdev_executed_cells(nb_path: Path) -> list:
    "The cells `nbdev-docs` executes before Quarto renders: exports, cells with an import, show_doc (nbdev's own choice)."
    import warnings
    from fastcore.basics import str2bool
    from nbdev.process import NBProcessor
    from nbdev.processors import FrontmatterProc, _do_eval, add_show_docs

    p = NBProcessor(nb_path, procs=[FrontmatterProc, add_show_docs], rm_directives=False)
    p.process()
    fm = getattr(p.nb, "frontmatter_", {}) or {}
    if not getattr(p.nb, "has_docs_", None) or str2bool(fm.get("skip_showdoc", False)):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nbdev warns about mixed cells; the test below says what matters
        return [c for c in p.nb.cells if _do_eval(c)]


def _names(tree) -> tuple[set, set, bool]:
    "(names bound at module level, names loaded when the cell runs, whether it star-imports)."
    import ast

    bound, used, star = set(), set(), False

    def visit(n, body_runs=True, binds=True):
        nonlocal star
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and binds:
            bound.add(n.name)
        if isinstance(n, (ast.Import, ast.ImportFrom)) and binds:
            for a in n.names:
                star |= a.name == "*"
                bound.add((a.asname or a.name).split(".")[0])
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load) and body_runs:
                used.add(n.id)
            elif binds:
                bound.add(n.id)
        if isinstance(n, ast.ExceptHandler) and n.name and binds:
            bound.add(n.name)
        for ch in ast.iter_child_nodes(n):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and ch in n.body:
                visit(ch, False, False)
            elif isinstance(n, ast.Lambda) and ch is n.body:
                visit(ch, False, False)
            elif isinstance(n, ast.ClassDef) and ch in n.body:
                visit(ch, body_runs, False)  # class bodies run, bind locally
            else:
                visit(ch, body_runs, binds)

    visit(tree)
    return bound, used, star


def _nbdev_problems(nb_path: Path) -> list[str]:
    import ast, builtins

    known, bad = set(dir(builtins)) | {"show_doc", "get_ipython", "display"}, []
    for c in _nbdev_executed_cells(nb_path):
        bound, used, star = _names(ast.parse(c.source))
        if star:
            return bad
        known |= bound
        if miss := sorted(used - known):
            bad.append(f"{nb_path.name}: the cell starting {c.source.splitlines()[0][:60]!r} uses {miss}")
    return bad


def test_nbdev_docs_can_run_the_cells_it_executes():
    """With Quarto, `nbdev-docs` executes every cell that holds an import (and the exports) to draw show_doc; a cell
    that also uses a name from a cell nbdev skips (a papermill parameter, a variable of an example) stops the build."""
    bad = [b for f in site.notebooks(ROOT / "nbs") for b in _nbdev_problems(f)]
    assert not bad, (
        "nbdev-docs would stop on these cells (it runs them because they import something, "
        "without the cells that define the names they use); move their imports into the module's "
        "import cell or a cell of their own:\n" + "\n".join(bad)
    )


def test_the_nbdev_check_sees_a_name_from_a_skipped_cell(tmp_path):
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# T"),
            code("#| default_exp t"),
            code("#| export\nimport math\ndef f(x): return math.sqrt(x)"),
            code("n = 3"),
            code("import os\nm = 2\nprint(f(m), os.sep)"),
            code("import json\nprint(json.dumps(n))"),
        ]
    )
    nbformat.write(nb, tmp_path / "01_t.ipynb")
    assert _nbdev_problems(tmp_path / "01_t.ipynb") == [
        "01_t.ipynb: the cell starting 'import json' uses ['n']"
    ]


def test_the_publishing_workflow_is_nbdevs_quarto_pages_workflow():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yaml").read_text())
    steps = wf["jobs"]["deploy"]["steps"]
    assert any(s.get("uses") == "fastai/workflows/quarto-ghp@master" for s in steps)
    assert wf["permissions"]["pages"] == "write"


# --- the offline build ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "_docs"
    r = subprocess.run(
        [sys.executable, ROOT / "tools" / "site.py", "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "offline site" in r.stdout and str(out / "index.html") in r.stdout
    return out, r, {p.name: _soup(p) for p in out.glob("*.html")}  # parsed once: the pages are large


def test_the_build_reports_no_problem(built):
    _, r, _ = built
    assert "warning" not in r.stderr, r.stderr


def test_every_notebook_has_a_page_in_the_sidebars_order(built):
    out, _, soups = built
    files = site.sidebar_files(_cfg())
    pages = [site.page_name(f) for f in files]
    assert sorted(pages) == sorted(soups), "one page per notebook, and no other"
    for f, page in zip(files, pages):
        soup = soups[page]
        nav = [a["href"] for a in soup.select("nav.sidebar a")]
        assert nav == pages, f"{page}: sidebar order differs from _quarto.yml"
        active = soup.select("nav.sidebar a.active")
        assert [a["href"] for a in active] == [page], f"{page}: the current page is not the one highlighted"


def test_every_page_has_its_title_a_figure_and_typeset_math(built):
    out, _, soups = built
    bad = []
    for f in site.sidebar_files(_cfg()):
        nb = nbformat.read(ROOT / "nbs" / f, as_version=4)
        title = site.frontmatter(nb)[0]
        soup = soups[site.page_name(f)]
        if (
            not title
            or soup.select_one("h1.title").get_text() != title
            or not soup.title.get_text().startswith(title)
        ):
            bad.append(f"{f}: the page does not carry the notebook's title {title!r}")
        main = soup.select_one("main")
        if not main.select("img"):
            bad.append(f"{f}: no figure (its saved outputs show no image)")
        if not main.select(".katex"):
            bad.append(f"{f}: no math (nothing between $ or $$ in its Markdown)")
        if err := main.select_one(".katex-error"):
            bad.append(f"{f}: KaTeX could not typeset {err.get_text()!r}")
        text = _visible_text(main)
        if "$$" in text or re.search(r"(?<![\w\\])\$[^$\s][^$]*\$", text):
            bad.append(f"{f}: raw TeX left on the page")
    assert not bad, "\n".join(bad)


def test_links_between_pages_resolve(built):
    out, _, soups = built
    ids = {name: {t["id"] for t in soup.select("[id]")} for name, soup in soups.items()}
    bad = []
    for p in sorted(out.glob("*.html")):
        soup = soups[p.name]
        refs = [a.get("href") for a in soup.select("a[href], link[href]")] + [
            t.get("src") for t in soup.select("img[src], script[src]")
        ]
        for ref in refs:
            u = urlparse(ref)
            if u.scheme in ("http", "https", "mailto", "data"):
                continue
            target = p if not u.path else (p.parent / unquote(u.path)).resolve()
            if not target.exists():
                bad.append(f"{p.name}: {ref} (no such file)")
                continue
            if u.fragment and target.suffix == ".html" and u.fragment not in ids[target.name]:
                bad.append(f"{p.name}: {ref} (no such anchor)")
    assert not bad, "\n".join(bad)
    index = soups["index.html"]  # the overview links every page of the reading path
    linked = {urlparse(a["href"]).path for a in index.select("main a[href]")}
    assert not (
        missing := [
            site.page_name(f) for f in site.sidebar_files(_cfg())[1:] if site.page_name(f) not in linked
        ]
    ), f"add these notebooks to the reading path in nbs/index.ipynb: {missing}"


def test_nothing_is_fetched_at_view_time(built):
    "No CDN: every script, style sheet and font the pages use is in the site."
    out, _, soups = built
    for p in out.glob("*.html"):
        soup = soups[p.name]
        for t in soup.select("script[src], link[href][rel~=stylesheet]"):
            assert not urlparse(t.get("src") or t.get("href")).scheme, f"{p.name}: {t}"
    css = (out / "assets" / "katex" / "katex.min.css").read_text()
    fonts = set(re.findall(r"url\((fonts/[^)]+\.woff2)\)", css))
    assert fonts and all((out / "assets" / "katex" / f).exists() for f in fonts)
    idx = (out / "assets" / "search-index.js").read_text()
    assert all(f'"href": "{site.page_name(f)}"' in idx for f in site.sidebar_files(_cfg()))


# --- the renderer on a notebook made for the purpose ------------------------------------------


def _mini_project(root: Path, extra_nb: bool = False) -> Path:
    (root / "nbs").mkdir(parents=True)
    (root / "_quarto.yml").write_text(
        yaml.safe_dump(
            {
                "project": {"type": "website"},
                "website": {
                    "title": "mini",
                    "page-footer": {"left": "Cite the paper."},
                    "sidebar": {
                        "contents": ["index.ipynb", {"section": "Parts", "contents": ["01_part.ipynb"]}]
                    },
                },
            }
        )
    )
    md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell
    nbformat.write(
        nbformat.v4.new_notebook(
            cells=[md("# Mini\n\n> A subtitle with $x$."), md("See [the part](01_part.ipynb#a-part).")]
        ),
        root / "nbs" / "index.ipynb",
    )
    part = nbformat.v4.new_notebook(
        cells=[
            md("# Part\n\n> Its subtitle."),
            code("#| default_exp part"),
            code("#| export\nimport math"),
            code("#| hide\nSECRET = 1"),
            md(
                "## A part\n\n$$ u = -\\sum_c p_c \\log p_c \\tag{6} $$\n\nInline $a_1$, a price of 5 dollars, and code `$not math$` and `area`."
            ),
            code(
                '#| export\ndef area(r: float) -> float:\n    "Area of a disk."\n    return math.pi * r * r'
            ),
            code(
                "#| code-fold: true\nprint('folded')",
                outputs=[nbformat.v4.new_output("stream", name="stdout", text="folded\n")],
            ),
            code(
                "#| echo: false\nshown_output_only = 1",
                outputs=[nbformat.v4.new_output("stream", name="stdout", text="only the output\n")],
            ),
        ]
    )
    nbformat.write(part, root / "nbs" / "01_part.ipynb")
    if extra_nb:
        nbformat.write(nbformat.v4.new_notebook(cells=[md("# Extra")]), root / "nbs" / "02_extra.ipynb")
    return root


def test_the_renderer_follows_the_cell_directives(tmp_path):
    root = _mini_project(tmp_path / "p")
    problems = site.Site(root).build(tmp_path / "out")
    assert problems == []
    page = (tmp_path / "out" / "part.html").read_text()
    soup = BeautifulSoup(page, "html.parser")
    assert (
        soup.select_one("h1.title").get_text() == "Part"
        and "Its subtitle." in soup.select_one(".subtitle").get_text()
    )
    assert "SECRET" not in page and "default_exp" not in page and "#|" not in page
    fold = soup.select("details.code-fold")
    assert [d.summary.get_text() for d in fold] == ["Imports", "Code"] and not fold[1].has_attr("open")
    assert "print" in fold[1].get_text() and "folded" in soup.select(".output.stream")[0].get_text()
    assert "shown_output_only" not in page and "only the output" in page
    assert (
        soup.select_one("span#area") is not None
        and "def" in soup.select_one(".cell.code span#area").parent.get_text()
    )
    assert soup.select_one('a.symbol[href="part.html#area"]') is not None, "`area` links to its definition"
    assert soup.select(".katex-display") and "(6)" in soup.select_one(".katex-display").get_text()
    assert soup.select_one("code").get_text() == "$not math$" and "5 dollars" in page
    index = BeautifulSoup((tmp_path / "out" / "index.html").read_text(), "html.parser")
    assert index.select_one('main a[href="part.html#a-part"]') is not None, ".ipynb links point to the pages"
    assert (
        index.select_one(".subtitle .katex") is not None
        and "Cite the paper." in index.select_one("footer").get_text()
    )
    assert [a["href"] for a in index.select("nav.pager a")] == ["part.html"]


def test_a_notebook_missing_from_the_sidebar_fails_the_strict_build(tmp_path):
    root = _mini_project(tmp_path / "p", extra_nb=True)
    problems = site.Site(root).build(tmp_path / "out")
    assert problems == ["nbs/02_extra.ipynb is not in the sidebar of _quarto.yml"]
    with pytest.raises(SystemExit):
        site.Site(root).build(tmp_path / "out", strict=True)


# --- a real browser ---------------------------------------------------------------------------


def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if r.returncode:
            pytest.skip(f"could not install Debian's chromium: {r.stderr[-500:]}")
    return CHROMIUM


def _browse(url: str, tmp: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    "The DOM after the page's scripts ran, and the console messages, from headless Chromium."
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,900",
        "--virtual-time-budget=3000",
    ]
    flags += ["--dump-dom"] + ([f"--screenshot={screenshot}"] if screenshot else [])
    r = subprocess.run([_chromium(), *flags, url], capture_output=True, text=True, timeout=120)
    console = [l for l in r.stderr.splitlines() if ":CONSOLE" in l or "Uncaught" in l]
    return r.stdout, console


def _png_size(p: Path) -> tuple[int, int]:
    head = p.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{p} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_the_console_check_catches_errors(tmp_path):
    "The check below can fail: a page that throws is caught."
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>")
    _, console = _browse(bad.as_uri(), tmp_path)
    assert any("Uncaught ReferenceError" in l for l in console), console


@pytest.mark.parametrize("page", ["index.html", "uncertainty.html"])
def test_pages_load_in_chromium_with_math_typeset(built, page, tmp_path):
    out, _, _ = built
    url, shot = (out / page).as_uri(), tmp_path / f"{page}.png"
    dom, console = _browse(url, tmp_path, screenshot=shot)
    assert not console, f"{page}: console messages:\n" + "\n".join(console)
    soup = BeautifulSoup(dom, "html.parser")
    assert soup.html.get("data-site-ready") == "1", f"{page}: the site script did not run to its end"
    assert soup.select(".katex") and "$$" not in _visible_text(soup.select_one("main"))
    w, h = _png_size(shot)
    assert (w, h) == (1280, 900) and shot.stat().st_size > 20_000, "the screenshot is blank or missing"
    if os.environ.get("UCPCL_SCREENSHOTS"):
        shutil.copy2(shot, Path(os.environ["UCPCL_SCREENSHOTS"]) / shot.name)


def test_search_finds_a_component_in_chromium(built, tmp_path):
    out, _, _ = built
    dom, console = _browse((out / "index.html").as_uri() + "?q=entropy", tmp_path)
    assert not console, console
    hits = [a["href"] for a in BeautifulSoup(dom, "html.parser").select("#search-results a")]
    assert hits and any(h.startswith("uncertainty.html") for h in hits), hits


# The html-manager's bundled JSON-schema validator prints one warning about its own schema; it says nothing about the page.
_BENIGN = ("strict mode: use allowUnionTypes",)


def _widget_pages(out: Path) -> list[str]:
    return sorted(
        p.name for p in out.glob("*.html") if "application/vnd.jupyter.widget-state+json" in p.read_text()
    )


def test_saved_widgets_render_offline(tmp_path):
    "A notebook run with its widget state saved: the page embeds the state and Chromium draws the controls, no kernel, no CDN."
    from nbclient import NotebookClient

    root = tmp_path / "w"
    (root / "nbs").mkdir(parents=True)
    (root / "_quarto.yml").write_text(
        yaml.safe_dump(
            {"project": {"type": "website"}, "website": {"sidebar": {"contents": ["index.ipynb"]}}}
        )
    )
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# Widgets"),
            nbformat.v4.new_code_cell(
                "import ipywidgets as w\nout = w.Output()\nwith out: print('saved output')\nw.VBox([w.FloatSlider(value=0.25, description='H'), out])"
            ),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    NotebookClient(nb, kernel_name="python3", store_widget_state=True, timeout=120).execute()
    nbformat.write(nb, root / "nbs" / "index.ipynb")
    assert site.Site(root).build(tmp_path / "out") == []
    assert _widget_pages(tmp_path / "out") == ["index.html"]
    dom, console = _browse((tmp_path / "out" / "index.html").as_uri(), tmp_path)
    assert not [l for l in console if not any(b in l for b in _BENIGN)], console
    soup = BeautifulSoup(dom, "html.parser")
    assert soup.select(".widget-slider") and "saved output" in soup.select_one(".widget-output").get_text()


def test_the_sites_widget_pages_render_in_chromium(built, tmp_path):
    out, _, _ = built
    if not (pages := _widget_pages(out)):
        pytest.skip("no notebook saved widget state")
    for page in pages:
        dom, console = _browse((out / page).as_uri(), tmp_path)
        assert not [l for l in console if not any(b in l for b in _BENIGN)], f"{page}: {console}"
        assert BeautifulSoup(dom, "html.parser").select(".jupyter-widgets"), f"{page}: no widget was drawn"
