"""The documentation site as its readers get it.

Quarto renders every notebook through `nbdev-docs`, as `make docs` does, into a copy of the project in a
temporary folder, once per session; headless Chromium then reads every page from a local HTTP server and
records what it requested, what it logged and what it drew. The checks: formulas typeset by the site's
own KaTeX and no raw TeX left, every image loaded, no console error, no request beyond the local server,
code that scrolls sideways, the Mermaid diagram drawn, the explorer's static stand-in, and the code of
each equation's function visible on its page.

Quarto is taken from PATH or installed with ../shared/tools/quarto/install; Chromium from
$UCPCL_CHROMIUM or PATH (Debian's `chromium`, or Chrome). Without them these tests skip and say why.
Set $UCPCL_SCREENSHOTS to a folder to keep the screenshots, and $UCPCL_SITE to a built site (`_docs` after
`make docs`) to check it instead of rendering one.
"""

import ast, builtins, functools, http.server, os, re, shutil, subprocess, sys, threading, time, warnings
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
BIN = Path(sys.executable).parent
BUILT = (
    Path(os.environ["UCPCL_SITE"]).resolve() if os.environ.get("UCPCL_SITE") else None
)  # from where pytest ran
QUARTO_INSTALL = ROOT.parent / "shared" / "tools" / "quarto" / "install"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Flags that keep a headless Chromium from calling home: no sync, no component or background updates.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def notebooks() -> list[Path]:
    return sorted(p for p in NBS.glob("*.ipynb") if not p.name.startswith((".", "_")))


def page_name(nb: str) -> str:
    "The page nbdev gives a notebook: its name less the number (`01_uncertainty.ipynb`: `uncertainty.html`)."
    stem = Path(nb).stem
    return re.sub(r"^\d+[a-z]?_", "", stem) + ".html"


def _cfg() -> dict:
    return yaml.safe_load((ROOT / "_quarto.yml").read_text())


def sidebar_files(cfg: dict) -> list[str]:
    "The notebooks of the sidebar in its order."
    out = []

    def walk(items):
        for e in items:
            if isinstance(e, str):
                out.append(e)
            elif "href" in e:
                out.append(e["href"])
            else:
                walk(e.get("contents", []))

    walk(cfg["website"]["sidebar"]["contents"])
    return out


# --- the configuration -------------------------------------------------------------------------


def test_quarto_yml_names_exactly_the_notebooks():
    cfg = _cfg()
    assert cfg["project"]["type"] == "website" and cfg["project"]["output-dir"] == "_docs"
    files = sidebar_files(cfg)
    assert files[0] == "index.ipynb", "the overview comes first"
    assert len(files) == len(set(files)), f"named twice: {sorted({f for f in files if files.count(f) > 1})}"
    missing = [f for f in files if not (NBS / f).exists()]
    assert not missing, f"_quarto.yml names notebooks that are not in nbs/: {missing}"
    unnamed = [p.name for p in notebooks() if p.name not in files]
    assert not unnamed, f"add these notebooks to the sidebar in _quarto.yml: {unnamed}"


def test_the_site_needs_no_network():
    "Math from the site's own KaTeX (Makefile fetches it into nbs/katex/), no web font, code that scrolls."
    cfg, make = _cfg(), (ROOT / "Makefile").read_text()
    html = cfg["format"]["html"]
    math = html["html-math-method"]
    assert math["method"] == "katex" and math["url"] == "katex/", "math must come from the site itself"
    assert "katex/" in cfg["project"]["resources"] and "KATEX_DIR := nbs/katex" in make
    assert "styles.scss" in html["theme"]
    assert re.search(r"^\$web-font-path:\s*false;", (NBS / "styles.scss").read_text(), re.M)
    assert html["code-overflow"] == "scroll"
    assert "nbs/katex/" in (ROOT / ".gitignore").read_text().split()


def test_nbdev_docs_reads_the_top_level_config(tmp_path, monkeypatch):
    "nbs/_quarto.yml links to ../_quarto.yml; nbdev keeps it, stages its content and writes no sidebar."
    link = NBS / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()
    from nbdev.config import get_config
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import _proc_file

    (tmp_path / "nbs").mkdir()
    shutil.copy2(ROOT / "pyproject.toml", tmp_path)
    shutil.copy2(ROOT / "_quarto.yml", tmp_path)
    (tmp_path / "nbs" / "_quarto.yml").symlink_to("../_quarto.yml")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T")])
    nbformat.write(nb, tmp_path / "nbs" / "index.ipynb")
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


def test_make_docs_without_quarto_says_how_to_install_it():
    if shutil.which("quarto", path="/usr/bin:/bin"):
        pytest.skip("Quarto is installed in /usr/bin or /bin: make docs cannot be run without it here")
    r = subprocess.run(
        ["make", "--no-print-directory", "docs"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode != 0
    assert "Quarto is not on PATH" in r.stdout and "quarto.org" in r.stdout and "quarto/install" in r.stdout


# --- the cells nbdev-docs executes ---------------------------------------------------------------


def _nbdev_executed_cells(nb_path: Path) -> list:
    "The cells `nbdev-docs` runs before Quarto renders: exports, cells with an import, show_doc (its choice)."
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
    """`nbdev-docs` executes every cell that holds an import (and the exports) to draw show_doc; a cell
    that also uses a name from a cell nbdev skips (a papermill parameter, an example's variable) stops it."""
    bad = [b for f in notebooks() for b in _nbdev_problems(f)]
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


def test_the_cli_module_runs_in_nbdevs_executor_without_exiting():
    """nbdev-docs runs the exported cells of nbs/12_cli.ipynb in its own shell, where `__name__` is
    `__main__`: the guard must not call `main()` there, yet `ucpcl` and `python -m ucpcl.cli` run it."""
    from execnb.shell import CaptureShell

    nb = nbformat.read(NBS / "12_cli.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith("#| export")]
    assert any("__main__" in c.source for c in cells)
    shell = CaptureShell()
    for c in cells:
        shell.run(c.source)
        assert shell.exc is None, f"{c.source.splitlines()[1]!r} raised {shell.exc!r}"
    for cmd in ([BIN / "ucpcl", "--help"], [sys.executable, "-m", "ucpcl.cli", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("usage: ucpcl"), (cmd, r.stdout, r.stderr)
    bad = [sys.executable, "-m", "ucpcl.cli", "train", "--data-root", "/nonexistent", "--method", "nope"]
    r = subprocess.run(bad, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown method 'nope'" in r.stderr, "the guard passes main()'s status on"


# --- the workflows ------------------------------------------------------------------------------


def _workflow(name: str) -> dict:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def _runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def test_the_pages_workflow_builds_with_make_docs_and_publishes_docs():
    wf = _workflow("deploy.yaml")
    assert "main" in wf["on"]["push"]["branches"]
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    uses = [s.get("uses", "") for s in build["steps"]]
    assert any(u.startswith("quarto-dev/quarto-actions/setup@") for u in uses)
    assert re.search(r"^make docs$", _runs(build), re.M), "the site is built the README's way"
    upload = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@"))
    assert upload["with"]["path"] == "_docs"
    assert deploy["needs"] == "build" and deploy["steps"][-1]["uses"].startswith("actions/deploy-pages@")
    text = (ROOT / ".github" / "workflows" / "deploy.yaml").read_text()
    assert "fastai/workflows" not in text and "settings.ini" not in text, (
        "nbdev 2's action does not fit nbdev 3"
    )


def test_the_ci_workflow_runs_make_test_on_every_push():
    wf = _workflow("ci.yaml")
    assert "push" in wf["on"] and "pull_request" in wf["on"]
    (job,) = wf["jobs"].values()
    uses = [s.get("uses", "") for s in job["steps"]]
    assert any(u.startswith("quarto-dev/quarto-actions/setup@") for u in uses), "the site tests need Quarto"
    assert re.search(r"^make test$", _runs(job), re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and "chromium" in ci and "quarto/install" in ci and "make test" in ci


# --- the rendered site -------------------------------------------------------------------------


def _quarto() -> str:
    "The `quarto` launcher: from PATH, or installed once with ../shared/tools/quarto/install."
    if q := shutil.which("quarto"):
        return q
    if not QUARTO_INSTALL.exists():
        pytest.skip(f"Quarto is not on PATH and {QUARTO_INSTALL} does not exist: install Quarto (quarto.org)")
    r = subprocess.run(["bash", QUARTO_INSTALL], capture_output=True, text=True, timeout=900)
    if r.returncode:
        pytest.skip(f"{QUARTO_INSTALL} could not install Quarto:\n{r.stderr[-2000:]}")
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    "`make docs` in a copy of the project: KaTeX, then nbdev-docs with Quarto; the rendered _docs/."
    if BUILT:
        return BUILT
    quarto = _quarto()
    r = subprocess.run(["make", "--no-print-directory", "katex"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(
            f"make katex could not fetch KaTeX from the npm registry:\n{r.stdout[-1000:]}{r.stderr[-1000:]}"
        )
    proj = tmp_path_factory.mktemp("site")
    for f in ("pyproject.toml", "_quarto.yml"):
        shutil.copy2(ROOT / f, proj / f)
    skip = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "_proc", "_docs")
    shutil.copytree(NBS, proj / "nbs", symlinks=True, ignore=skip)
    shutil.copytree(ROOT / "ucpcl", proj / "ucpcl", ignore=skip)  # nbdev-docs rewrites its _modidx.py
    env = {**os.environ, "PATH": f"{Path(quarto).parent}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"}
    t = time.perf_counter()
    r = subprocess.run([BIN / "nbdev-docs"], cwd=proj, capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, f"nbdev-docs failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    docs, seconds = proj / "_docs", time.perf_counter() - t
    print(f"\nsite: nbdev-docs rendered {len(list(docs.glob('*.html')))} pages in {seconds:.0f} s")
    return docs


def _browser_path() -> str:
    for b in (os.environ.get("UCPCL_CHROMIUM"), *BROWSERS):
        if b and (p := shutil.which(b)):
            return p
    pytest.skip(
        "no Chromium: apt-get install chromium (Debian), or set UCPCL_CHROMIUM to a Chromium or Chrome"
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the browser closed a page mid-transfer
            super().handle_error(request, client_address)


# What the browser reports about a page once its scripts ran and every image was asked to load.
_PAGE_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const main = document.querySelector("main");
  const text = main.cloneNode(true);
  text.querySelectorAll("pre, code, script, style, .katex, .sourceCode").forEach(e => e.remove());
  const pres = [...main.querySelectorAll("div.sourceCode pre, .cell-output pre")];
  return {
    title: (document.querySelector("h1.title") || {}).textContent || "",
    math: main.querySelectorAll("span.math").length,
    typeset: main.querySelectorAll("span.math .katex").length,
    katex_errors: [...main.querySelectorAll(".katex-error")].map(e => e.textContent),
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    text: text.textContent,
    code: [...main.querySelectorAll("div.sourceCode")].map(e => e.textContent),
    pre_styles: pres.map(p => { const s = getComputedStyle(p); return s.whiteSpace + " " + s.overflowX; }),
    scrolling: pres.filter(p => p.scrollWidth > p.clientWidth + 1).length,
    mermaid_nodes: main.querySelectorAll("svg[id^=mermaid] g.node").length,
    mermaid_text: [...main.querySelectorAll("svg[id^=mermaid]")].map(e => e.textContent).join(" "),
    widgets: main.querySelectorAll(".jupyter-widgets, .widget-slider, input[type=range], select").length
      + document.querySelectorAll("script[type*='jupyter.widget']").length,
    sidebar: [...document.querySelectorAll("#quarto-sidebar a.sidebar-link[href]")]
      .map(a => new URL(a.href).pathname.split("/").pop() || "index.html"),  // Quarto links index.html as ./
  };
}"""

# the pages to photograph, and what to scroll to first (its last match): the explorer's grid, the diagram
SHOTS = {
    "index.html": "",
    "uncertainty.html": "",
    "explorer.html": "main img",
    "models.html": "svg[id^=mermaid]",
}


def _browse(folder: Path, names: list[str], shots: Path) -> dict:
    "Pages of `folder` read in headless Chromium over a local HTTP server: what each drew, logged, requested."
    browser_path = _browser_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base, out = f"http://127.0.0.1:{server.server_port}/", {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)  # a fresh profile
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            for name in names:
                out[name] = _read_page(context, base, name, shots)
            browser.close()
    finally:
        server.shutdown()
    return out


@pytest.fixture(scope="session")
def pages(site, tmp_path_factory) -> dict:
    "Every page of the site, read once."
    shots = Path(os.environ.get("UCPCL_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    out = _browse(site, sorted(p.name for p in site.glob("*.html")), shots)
    print(
        f"\nsite: Chromium read {len(out)} pages in {time.perf_counter() - t:.0f} s; screenshots in {shots}"
    )
    return out


BAD_PAGE = r"""<!DOCTYPE html><html><head><title>Bad</title></head><body><main>
<h1 class="title">Bad</h1><p>Raw $$\ell_c = 1$$ and $x_1$.</p><span class="math inline">\frac{1}{2}</span>
<img src="missing.png"><img src="https://cdn.example.invalid/x.png"><script>undefinedFunction();</script>
</main></body></html>"""


def test_the_checks_catch_a_bad_page(tmp_path):
    "The checks can fail: raw TeX, a missing image, a request to a CDN (refused) and a script error are seen."
    (tmp_path / "bad.html").write_text(BAD_PAGE)
    bad = _browse(tmp_path, ["bad.html"], tmp_path)["bad.html"]
    assert set(bad["external"]) == {"https://cdn.example.invalid/x.png"}
    assert any("missing.png (404)" in f for f in bad["failed"]) and "missing.png" in bad["broken"]
    assert any("undefinedFunction" in c for c in bad["console"])
    assert bad["math"] == 1 and bad["typeset"] == 0 and _RAW_TEX.search(bad["text"])
    assert {"$$", "$x_1$", "\\ell", "\\frac"} <= {m[0] for m in _RAW_TEX.finditer(bad["text"])}


def _read_page(context, base: str, name: str, shots: Path) -> dict:
    page, log = context.new_page(), dict(requests=[], console=[], failed=[])
    page.on("request", lambda r: log["requests"].append(r.url))
    page.on(
        "console", lambda m: m.type in ("error", "warning") and log["console"].append(f"{m.type}: {m.text}")
    )
    page.on("pageerror", lambda e: log["console"].append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: log["failed"].append(f"{r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and log["failed"].append(f"{r.url} ({r.status})"))
    local = lambda url: url.startswith(base) or url.startswith("data:")
    # a request beyond the local server is recorded above and refused here, so that none leaves the machine
    page.route("**/*", lambda route: route.continue_() if local(route.request.url) else route.abort())
    # "networkidle" alone can come while the page is still parsing (Chromium busy running the Mermaid script,
    # no request for 500 ms), before KaTeX typesets at DOMContentLoaded: wait for the load event as well
    response = page.goto(base + name, wait_until="load")
    assert response.ok, f"{name}: HTTP {response.status}"
    page.wait_for_load_state("networkidle")
    info = page.evaluate(_PAGE_JS)
    info.update(log, external=[u for u in log["requests"] if not local(u)])
    if name in SHOTS:
        if SHOTS[name]:
            page.locator(SHOTS[name]).last.scroll_into_view_if_needed()
        info["shot"] = shots / name.replace(".html", ".png")
        page.screenshot(path=info["shot"])
    page.close()
    return info


def _problems(pages: dict, check) -> list[str]:
    return [f"{name}: {msg}" for name, info in sorted(pages.items()) for msg in check(info)]


def test_every_notebook_has_its_page_with_its_title_in_the_sidebars_order(site, pages):
    files = sidebar_files(_cfg())
    assert sorted(pages) == sorted(page_name(f) for f in files), "one page per notebook, and no other"
    for f in files:
        nb = nbformat.read(NBS / f, as_version=4)
        title = re.match(r"#\s+(.+)", nb.cells[0].source)[1].strip()
        assert pages[page_name(f)]["title"] == title, f"{f}: the page's title is not the notebook's"
    assert pages["index.html"]["sidebar"] == [page_name(f) for f in files]
    assert set(re.findall(r'"href":\s*"([^"#]+)', (site / "search.json").read_text())) >= set(pages)


def test_no_request_leaves_the_local_server(pages):
    "Every script, style sheet, font and image a page asks for comes from the site itself."
    assert not _problems(pages, lambda i: i["external"]), "requests beyond the site (refused here)"
    assert not _problems(pages, lambda i: i["failed"]), "requests that failed"
    assert all(
        any(u.endswith("katex/katex.min.js") for u in i["requests"]) for i in pages.values() if i["math"]
    )
    assert any(
        re.search(r"katex/fonts/KaTeX_\w+-\w+\.woff2$", u) for i in pages.values() for u in i["requests"]
    )


def test_no_console_errors(pages):
    assert not _problems(pages, lambda i: i["console"])


# TeX that KaTeX did not typeset: $$, a $...$ pair, or a command such as \frac
_RAW_TEX = re.compile(
    r"\$\$|(?<![\w\\])\$[^$\s][^$\n]*?\$|\\(frac|ell|hat|sum|tag|mathbb|operatorname|lambda|theta|epsilon|log)(?![a-zA-Z])"
)


def test_formulas_are_typeset_by_katex(pages):
    assert sum(i["math"] for i in pages.values()) > 500 and pages["losses.html"]["math"] > 50

    def check(i):
        if i["typeset"] != i["math"]:
            yield f"{i['math'] - i['typeset']} of {i['math']} formulas not typeset"
        yield from (f"KaTeX error: {e}" for e in i["katex_errors"])
        if m := _RAW_TEX.search(i["text"]):
            yield f"raw TeX on the page: ...{i['text'][max(0, m.start() - 60) : m.end() + 20]!r}"

    assert not _problems(pages, check)


def test_every_image_loads(pages):
    assert sum(i["images"] for i in pages.values()) >= len(pages)
    assert not _problems(pages, lambda i: [f"image not loaded: {s}" for s in i["broken"]])


def test_code_scrolls_sideways_instead_of_wrapping(pages):
    "A long line stays one line (wrapping to column 0 reads like a dedent in Python): the block scrolls."
    bad = _problems(pages, lambda i: [s for s in set(i["pre_styles"]) if s not in ("pre auto", "pre scroll")])
    assert not bad, "code blocks that wrap"
    assert sum(i["scrolling"] for i in pages.values()) > 0, "no code block is wider than its column"


def test_the_models_diagram_is_drawn(pages):
    models = pages["models.html"]
    assert models["mermaid_nodes"] >= 10, "the Mermaid flowchart has no drawn nodes"
    assert "ResNet encoder" in models["mermaid_text"] and "flowchart LR" not in models["text"]


def test_the_explorer_page_shows_the_static_grid_instead_of_dead_controls(pages):
    ex = pages["explorer.html"]
    assert ex["widgets"] == 0, "saved widget controls do nothing without a kernel: leave them out"
    assert ex["images"] >= 2 and "the grid above stands in for it" in ex["text"]
    assert not re.search(r"VBox\(|Image\(value=", " ".join(ex["code"]) + ex["text"])


def test_screenshots_show_the_pages(pages):
    "The screenshots of the overview, a component, the explorer and the diagram are pictures (look at them)."
    from PIL import Image

    for name in SHOTS:
        im = Image.open(pages[name]["shot"]).convert("L")
        assert im.size == (1280, 900)
        assert len(im.getcolors(1 << 16)) > 50, f"{name}: the screenshot is nearly blank"


# Each equation of the paper with code, the function or method that computes it, and the page that must show
# that code in full (`#| exports`; `#| export` shows only nbdev's signature card). Eq. 10 and 11 are the
# argument for Eq. 12 and compute nothing of their own.
EQUATION_CODE = {
    "Eq. 1": ("losses.html", "ucpcl.losses.total_loss"),
    "Eq. 1, lambda_t": ("losses.html", "ucpcl.losses.consistency_weight"),
    "Eq. 1, a training step": ("method.html", "ucpcl.method.UCPCL.training_step"),
    "Eq. 2": ("models.html", "ucpcl.models.PatchEmbedding.forward"),
    "Eq. 2, the decoder f_t": ("models.html", "ucpcl.models.TransformerDecoder.forward"),
    "Eq. 3": ("losses.html", "ucpcl.losses.supervised_loss"),
    "Eq. 4": ("losses.html", "ucpcl.losses.seg_loss"),
    "Eq. 4, L_Dice": ("losses.html", "ucpcl.losses._dice"),
    "Eq. 5": ("losses.html", "ucpcl.losses.consistency_loss"),
    "Eq. 6": ("uncertainty.html", "ucpcl.uncertainty.entropy_map"),
    "Eq. 7": ("uncertainty.html", "ucpcl.uncertainty.certain_pseudo_label"),
    "Eq. 7, the schedule of H": ("uncertainty.html", "ucpcl.uncertainty.ThresholdSchedule.__call__"),
    "Eq. 7, the ablations": ("uncertainty.html", "ucpcl.uncertainty.contrast_labels"),
    "anchors": ("anchors.html", "ucpcl.anchors.sample_anchor_index"),
    "anchors per class": ("anchors.html", "ucpcl.anchors.sample_anchors"),
    "Eq. 8, 9": ("contrast.html", "ucpcl.contrast.pixel_info_nce"),
    "Eq. 8, 9, the loop": ("contrast.html", "ucpcl.contrast.pixel_info_nce_loop"),
    "the memory queue": ("contrast.html", "ucpcl.contrast.MemoryQueue.push"),
    "Eq. 6-9, a training step": ("method.html", "ucpcl.method.UCPCL.contrast_step"),
    "Eq. 12": ("rotation.html", "ucpcl.rotation.rotation_loss"),
    "Eq. 12, exact form": ("rotation.html", "ucpcl.rotation.rotation_loss_all"),
    "Eq. 12, a training step": ("method.html", "ucpcl.method.UCPCL.rotation_term"),
}


def _code(qualname: str) -> str:
    "The source of a function or method, decorators and docstring included, as its cell shows it."
    import importlib, inspect, textwrap

    parts = qualname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ImportError:
            continue
    for name in parts[i:]:
        obj = getattr(obj, name)
    return textwrap.dedent(inspect.getsource(obj))


def test_the_code_looked_for_is_more_than_the_signature():
    "nbdev's signature card shows a function's name and arguments; the code looked for holds its body too."
    code = _code("ucpcl.uncertainty.entropy_map")
    assert code.startswith("def entropy_map(") and "return -torch.special.xlogy" in code
    push = _code("ucpcl.contrast.MemoryQueue.push")
    assert push.startswith("@patch\ndef push(") and "self.ptr.copy_" in push


@pytest.mark.parametrize("equation", list(EQUATION_CODE))
def test_the_code_of_each_equation_is_on_its_page(pages, equation):
    page, qualname = EQUATION_CODE[equation]
    code = " ".join(_code(qualname).split())
    shown = [" ".join(b.split()) for b in pages[page]["code"]]
    assert any(code in b for b in shown), (
        f"{page} does not show the code of {qualname} ({equation}): make its cell `#| exports`"
    )
