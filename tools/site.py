"""Build the documentation site without Quarto: static HTML pages from the notebooks' saved outputs.

    python tools/site.py [--out _docs] [--strict]

Everything comes from `_quarto.yml` (the one site configuration, also read by `nbdev-docs`):
the site title, the sidebar's sections and their order, the footer that cites the paper.
Each notebook it names becomes one page named as nbdev names it (`05_losses.ipynb` -> `losses.html`):
title and subtitle from the first `# Title` / `> subtitle` cell, Markdown through nbconvert's
mistune renderer, code highlighted by Pygments, outputs as saved (figures embedded as base64).
Cell directives as in nbdev and Quarto: `#| hide`, `#| include: false` and `#| default_exp` drop
the cell, `#| echo: false` hides the source, `#| output: false` the outputs, `#| code-fold: true`
folds the source into a closed <details> (`show`: open); all `#|` lines are stripped from the source.

Math is typeset at build time with KaTeX's node API (no JavaScript and no CDN at view time): the
`katex` npm package is installed once into a cache folder (`$UCPCL_SITE_CACHE`, default
`~/.cache/ucpcl-site`) with `npm install`, and its CSS and fonts are copied into the site.
Notebooks that saved ipywidgets state get it embedded with `@jupyter-widgets/html-manager`
(fetched once with `npm pack` into the same cache), so the saved widgets render offline.
Search is a small client-side index (`assets/search-index.js`) and a few lines of JavaScript.
"""

from __future__ import annotations
import argparse, ast, base64, html, json, os, re, shutil, subprocess, sys, tarfile, tempfile, time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat, yaml
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ROOT = Path(__file__).resolve().parents[1]
KATEX = "katex@0.16.22"
HTML_MANAGER = "@jupyter-widgets/html-manager@1.0.15"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_MATH = re.compile(r"@@KATEX(\d+)@@")
_HIDE = {"hide", "default_exp"}


# --- configuration ------------------------------------------------------------------------------


def load_config(path: Path = ROOT / "_quarto.yml") -> dict:
    "The parsed `_quarto.yml`."
    return yaml.safe_load(Path(path).read_text())


def _entry_file(e) -> str | None:
    return (
        e
        if isinstance(e, str)
        else (e.get("href") or e.get("file"))
        if isinstance(e, dict) and "section" not in e
        else None
    )


def sidebar_sections(cfg: dict) -> list[tuple[str | None, list[str]]]:
    "The sidebar as (section title or None, [notebook file names]) in `_quarto.yml` order."
    out: list[tuple[str | None, list[str]]] = []
    for e in cfg["website"]["sidebar"]["contents"]:
        if isinstance(e, dict) and "section" in e:
            out.append((e["section"], [f for c in e.get("contents", []) if (f := _entry_file(c))]))
        elif f := _entry_file(e):
            if out and out[-1][0] is None:
                out[-1][1].append(f)
            else:
                out.append((None, [f]))
    return out


def sidebar_files(cfg: dict) -> list[str]:
    "Every file the sidebar names, in reading order."
    return [f for _, fs in sidebar_sections(cfg) for f in fs]


def page_name(nb: str) -> str:
    "The page a notebook becomes, as nbdev names it: the numeric prefix dropped, `.html`."
    return re.sub(r"^\d+[a-zA-Z0-9]*_", "", Path(nb).name.lower()).rsplit(".", 1)[0] + ".html"


def notebooks(nbs: Path = ROOT / "nbs") -> list[Path]:
    "The project's notebooks (scratch notebooks starting with `_` left out)."
    return sorted(p for p in nbs.glob("*.ipynb") if not p.name.startswith("_"))


# --- npm assets ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    if d := os.environ.get("UCPCL_SITE_CACHE"):
        return Path(d)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ucpcl-site"


def _npm(*args, cwd: Path):
    if not shutil.which("npm"):
        sys.exit("npm is needed once to fetch KaTeX from the npm registry (apt-get install npm)")
    r = subprocess.run(
        ["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd, capture_output=True, text=True
    )
    if r.returncode:
        sys.exit(
            f"npm {' '.join(args)} failed (the npm registry must be reachable the first time):\n{r.stderr[-2000:]}"
        )


def ensure_katex() -> Path:
    "The installed katex package folder, installed into the cache on first use."
    dst = cache_dir() / KATEX.replace("@", "-")
    pkg = dst / "node_modules" / "katex"
    if (pkg / "dist" / "katex.min.css").exists():
        return pkg
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:  # install aside, then move: never half a package
        (Path(tmp) / "package.json").write_text('{"private": true}')
        print(f"installing {KATEX} from the npm registry into {dst} (once)")
        _npm("install", KATEX, "--ignore-scripts", cwd=Path(tmp))
        if not dst.exists():
            Path(tmp).rename(dst)
            Path(tmp).mkdir()
    return pkg


def ensure_html_manager() -> Path:
    "The `dist/` folder of @jupyter-widgets/html-manager (its self-contained embed.js), from `npm pack`."
    dst = cache_dir() / HTML_MANAGER.replace("@jupyter-widgets/", "").replace("@", "-")
    if (dst / "embed.js").exists():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        print(f"fetching {HTML_MANAGER} from the npm registry into {dst} (once)")
        _npm("pack", HTML_MANAGER, cwd=Path(tmp))
        tgz = next(Path(tmp).glob("*.tgz"))
        out = Path(tmp) / "dist"
        out.mkdir()
        with tarfile.open(tgz) as t:
            for m in t.getmembers():
                name = m.name.removeprefix("package/dist/")
                if (
                    m.isfile()
                    and m.name.startswith("package/dist/")
                    and "/" not in name
                    and not name.endswith(".map")
                    and not name.startswith(("embed-amd", "libembed"))
                ):
                    (out / name).write_bytes(t.extractfile(m).read())
        if not dst.exists():
            out.rename(dst)
    return dst


_KATEX_JS = r"""
const katex = require(process.argv[2]);
let input = '';
process.stdin.on('data', d => input += d);
process.stdin.on('end', () => {
  const out = JSON.parse(input).map(([tex, display]) => {
    const opts = {displayMode: display, strict: 'ignore', trust: false, output: 'htmlAndMathml'};
    try { return {html: katex.renderToString(tex, {...opts, throwOnError: true})}; }
    catch (e) { return {html: katex.renderToString(tex, {...opts, throwOnError: false}), error: String(e.message)}; }
  });
  process.stdout.write(JSON.stringify(out));
});
"""


def typeset(items: list[tuple[str, bool]], katex: Path) -> list[dict]:
    "KaTeX HTML for each (tex, display) pair, in one node process; failures carry an `error`."
    if not items:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False) as f:
        f.write(_KATEX_JS)
    try:
        r = subprocess.run(
            ["node", f.name, str(katex)], input=json.dumps(items), capture_output=True, text=True
        )
    finally:
        os.unlink(f.name)
    if r.returncode:
        sys.exit(f"KaTeX failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout)


# --- notebooks -> HTML --------------------------------------------------------------------------


def directives(src: str) -> tuple[dict, str]:
    "The cell's leading `#|` directives and its source without any `#|` line."
    d, body, head = {}, [], True
    for line in src.splitlines():
        m = _DIRECTIVE.match(line)
        if m and head:
            d[m[1]] = m[2] or "true"
            continue
        head = head and not line.strip()
        if not m:
            body.append(line)
    return d, "\n".join(body).strip("\n")


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else (x or "")


def slug(text: str) -> str:
    text = re.sub(r"<[^>]+>", "", _MATH.sub("", html.unescape(text)))
    return re.sub(r"[^a-z0-9_.]+", "-", text.lower()).strip("-.") or "section"


def exported_symbols(nb) -> list[str]:
    "Public names defined in the notebook's `#| export` cells (`Class.method` for `@patch`ed methods)."
    names = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        d, src = directives(c.source)
        if not ({"export", "exports"} & d.keys()):
            continue
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ann = n.args.args[0].annotation if isinstance(n, ast.FunctionDef) and n.args.args else None
                if any(getattr(dec, "id", None) == "patch" for dec in n.decorator_list) and isinstance(
                    ann, ast.Name
                ):
                    names.append(f"{ann.id}.{n.name}")
                else:
                    names.append(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    if isinstance(t, ast.Name):
                        names.append(t.id)
    return [n for n in names if not n.split(".")[-1].startswith("_")]


def _only_imports(src: str) -> bool:
    try:
        body = ast.parse(src).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)


def frontmatter(nb) -> tuple[str, str, int | None]:
    "(title, subtitle, index of the cell they came from) as nbdev reads them from the first Markdown cell."
    for i, c in enumerate(nb.cells):
        if c.cell_type != "markdown":
            continue
        m = re.match(r"\s*#\s+(.+?)\s*\n(?:\s*\n)*(?:>\s*(.+?)\s*(?:\n|$))?", c.source + "\n")
        if m:
            return m[1], (m[2] or ""), i
        break
    return "", "", None


@dataclass
class Page:
    nb: str  # notebook file name in nbs/
    href: str  # page file name in the site
    title: str = ""  # the notebook's `# Title`
    nav: str = ""  # its label in the sidebar and the pager (`text:` in _quarto.yml, else the title)
    subtitle: str = ""
    body: str = ""
    toc: list = field(default_factory=list)  # (level, id, html)
    ids: set = field(default_factory=set)
    search_text: str = ""
    widgets: bool = False
    subtitle_html: str = ""
    footer_html: str = ""


class _Renderer(IPythonRenderer):
    "nbconvert's renderer, with math left as placeholders for KaTeX, own heading ids and links fixed."

    def __init__(self, site: "Site", page: Page, **kw):
        super().__init__(escape=False, embed_images=True, path=str(site.nbs), **kw)
        self.site, self.page = site, page

    def block_math(self, body):
        return self.site.math(body, True)

    def inline_math(self, body):
        return self.site.math(body, False)

    def latex_environment(self, name, body):
        return self.site.math(f"\\begin{{{name}}}{body}\\end{{{name}}}", True)

    def heading(self, text, level, **attrs):
        hid = self.page_id(slug(text))
        if level in (2, 3):
            self.page.toc.append((level, hid, text))
        return f'<h{level} id="{hid}" class="anchored">{text}<a class="anchor-link" href="#{hid}" aria-label="Link to this section">#</a></h{level}>\n'

    def page_id(self, base: str) -> str:
        hid, k = base, 1
        while hid in self.page.ids:
            hid, k = f"{base}-{k}", k + 1
        self.page.ids.add(hid)
        return hid

    def link(self, text, url, title=None):
        return super().link(text, self.site.fix_href(url), title)

    def codespan(self, text):
        code = super().codespan(text)
        href = self.site.symbol_href(html.unescape(text))
        return f'<a class="symbol" href="{href}">{code}</a>' if href else code


class Site:
    def __init__(self, root: Path = ROOT, cfg: dict | None = None):
        self.root, self.nbs = root, root / "nbs"
        self.cfg = cfg or load_config(root / "_quarto.yml")
        self.web = self.cfg.get("website", {})
        self.files = sidebar_files(self.cfg)
        self.pages = {f: Page(f, page_name(f)) for f in self.files}
        self._math: list[tuple[str, bool]] = []
        self.symbols: dict[str, str] = {}  # name -> page#anchor
        self.formatter = HtmlFormatter(cssclass="highlight")

    # math placeholders, replaced by KaTeX's HTML once every page is rendered
    def math(self, tex: str, display: bool) -> str:
        self._math.append((tex.strip(), display))
        return f"@@KATEX{len(self._math) - 1}@@"

    def fix_href(self, url: str) -> str:
        m = re.match(r"^(?!\w+:)([^#?]*?)\.ipynb(#.*)?$", url or "")
        return page_name(Path(m[1]).name + ".ipynb") + (m[2] or "") if m else url

    def symbol_href(self, text: str) -> str | None:
        name = text.strip().removesuffix("()")
        if name in self.symbols:
            return self.symbols[name]
        parts = name.split(".")
        for k in range(1, len(parts)):  # ucpcl.losses.total_loss, losses.total_loss
            if (q := ".".join(parts[k:])) in self.symbols and ".".join(parts[:k]).split(".")[
                -1
            ] in self._modules.get(q, ()):
                return self.symbols[q]
        return None

    def _index_symbols(self, nbs: dict):
        seen, self._modules = {}, {}
        for f, nb in nbs.items():
            mod = next(
                (
                    directives(c.source)[0].get("default_exp")
                    for c in nb.cells
                    if c.cell_type == "code" and "default_exp" in directives(c.source)[0]
                ),
                None,
            )
            for n in exported_symbols(nb):
                seen.setdefault(n, []).append(f)
                if mod:
                    self._modules.setdefault(n, set()).add(mod.split(".")[-1])
        self.symbols = {
            n: f"{self.pages[fs[0]].href}#{n.lower()}" for n, fs in seen.items() if len(set(fs)) == 1
        }

    def markdown(self, src: str, page: Page, attachments=None) -> str:
        r = _Renderer(self, page, attachments=attachments or {})
        out = MarkdownWithMath(renderer=r).render(src)
        return out.replace("<table>", '<div class="table-wrap"><table>').replace("</table>", "</table></div>")

    def code(self, src: str) -> str:
        return highlight(src, PythonLexer(), self.formatter)

    def output(self, o, page: Page, nb) -> str:
        t = o.get("output_type")
        if t == "stream":
            text = _ANSI.sub("", _text(o.get("text"))).rstrip()
            return (
                f'<pre class="output stream {o.get("name", "stdout")}">{html.escape(text)}</pre>'
                if text
                else ""
            )
        if t == "error":
            tb = _ANSI.sub("", "\n".join(o.get("traceback", [])) or f"{o.get('ename')}: {o.get('evalue')}")
            return f'<pre class="output error">{html.escape(tb)}</pre>'
        data, meta = o.get("data", {}), o.get("metadata", {})
        if WIDGET_VIEW in data:
            state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
            if data[WIDGET_VIEW].get("model_id") in state:
                page.widgets = True
                return (
                    f'<div class="output widget"><p class="widget-note">The controls below show the state saved when the '
                    f"notebook ran; to move them, run the notebook in Jupyter.</p>"
                    f'<script type="{WIDGET_VIEW}">{json.dumps(data[WIDGET_VIEW])}</script></div>'
                )
            return (
                '<p class="output widget-note">An interactive widget was here; its state was not saved with the '
                "notebook. Open the notebook in Jupyter to use it.</p>"
            )
        if "text/html" in data:
            return f'<div class="output html">{_text(data["text/html"])}</div>'
        for mime in ("image/png", "image/jpeg"):
            if mime in data:
                size = meta.get(mime, {}) if isinstance(meta.get(mime), dict) else {}
                wh = "".join(f' {k}="{int(size[k])}"' for k in ("width", "height") if k in size)
                b64 = _text(data[mime]).replace("\n", "")
                return f'<div class="output figure"><img src="data:{mime};base64,{b64}" alt="Figure: output of the cell above"{wh}></div>'
        if "image/svg+xml" in data:
            b64 = base64.b64encode(_text(data["image/svg+xml"]).encode()).decode()
            return f'<div class="output figure"><img src="data:image/svg+xml;base64,{b64}" alt="Figure: output of the cell above"></div>'
        if "text/markdown" in data:
            return f'<div class="output markdown">{self.markdown(_text(data["text/markdown"]), page)}</div>'
        if "text/latex" in data:
            tex = _text(data["text/latex"]).strip().strip("$")
            return f'<div class="output latex">{self.math(tex, True)}</div>'
        if "text/plain" in data:
            return f'<pre class="output text">{html.escape(_ANSI.sub("", _text(data["text/plain"])))}</pre>'
        return ""

    def render_page(self, page: Page, nb) -> None:
        title, subtitle, fm = frontmatter(nb)
        page.title = title or Path(page.nb).stem
        page.subtitle, parts, words = subtitle, [], [title, subtitle]
        for i, c in enumerate(nb.cells):
            if c.cell_type == "markdown":
                src = c.source
                if i == fm:
                    src = re.sub(r"^\s*#\s+.*\n(\s*\n)*(>\s*.*(\n|$))?", "", src + "\n", count=1)
                if src.strip():
                    parts.append(
                        f'<div class="cell markdown">{self.markdown(src, page, c.get("attachments"))}</div>'
                    )
                    words.append(src)
            elif c.cell_type == "code":
                d, src = directives(c.source)
                if _HIDE & d.keys() or d.get("include") == "false":
                    continue
                anchors = "".join(
                    f'<span class="symbol-anchor" id="{n.lower()}"></span>'
                    for n in (
                        exported_symbols(nbformat.v4.new_notebook(cells=[c]))
                        if {"export", "exports"} & d.keys()
                        else []
                    )
                    if n.lower() not in page.ids and not page.ids.add(n.lower())
                )
                inp = ""
                if src.strip() and d.get("echo", "true") != "false":
                    label = (
                        '<div class="cell-label">Parameters (papermill can change them)</div>'
                        if "parameters" in c.metadata.get("tags", [])
                        else ""
                    )
                    inp, fold = label + self.code(src), d.get("code-fold", "false")
                    summary = "Code"
                    if fold == "false" and {"export", "exports"} & d.keys() and _only_imports(src):
                        fold, summary = (
                            "true",
                            "Imports",
                        )  # the module's import cell: folded, so that the page opens with prose
                    if fold in ("true", "show"):
                        inp = f'<details class="code-fold"{" open" if fold == "show" else ""}><summary>{summary}</summary>{inp}</details>'
                    inp = f'<div class="cell-input">{inp}</div>'
                    words.append(src)
                outs = (
                    ""
                    if d.get("output", "true") == "false"
                    else "".join(self.output(o, page, nb) for o in c.get("outputs", []))
                )
                if inp or outs or anchors:
                    parts.append(
                        f'<div class="cell code">{anchors}{inp}{f"<div class=cell-output>{outs}</div>" if outs else ""}</div>'
                    )
        page.body = "\n".join(parts)
        page.subtitle_html = (
            self.markdown(subtitle, page).strip().removeprefix("<p>").removesuffix("</p>") if subtitle else ""
        )
        page.footer_html = self.footer_html(page)
        page.search_text = re.sub(r"\s+", " ", re.sub(r"[`*#>$|\\{}_^]", " ", " ".join(words)))

    def _sidebar_text(self, f: str) -> str | None:
        for e in self.cfg["website"]["sidebar"]["contents"]:
            for c in e.get("contents", []) if isinstance(e, dict) and "section" in e else [e]:
                if isinstance(c, dict) and _entry_file(c) == f and c.get("text"):
                    return c["text"]
        return None

    # --- assembling -------------------------------------------------------------------------------
    def sidebar_html(self, current: Page) -> str:
        out = []
        for sec, files in sidebar_sections(self.cfg):
            files = [f for f in files if f in self.pages]
            if not files:
                continue
            items = "".join(
                f'<li><a href="{self.pages[f].href}"{" class=active aria-current=page" if self.pages[f] is current else ""}>'
                f"{html.escape(self.pages[f].nav)}</a></li>"
                for f in files
            )
            head = f'<div class="sidebar-section">{html.escape(sec)}</div>' if sec else ""
            out.append(f'<div class="sidebar-group">{head}<ul>{items}</ul></div>')
        return "\n".join(out)

    def footer_html(self, page: Page) -> str:
        pf = self.web.get("page-footer", {}) or {}
        pf = {"center": pf} if isinstance(pf, str) else pf
        parts = [self.markdown(str(pf[k]), page) for k in ("left", "center", "right") if pf.get(k)]
        src = self.web.get("repo-url")
        if src:
            path = f"{src.rstrip('/')}/blob/{self.web.get('repo-branch', 'main')}/{self.web.get('repo-subdir', 'nbs')}/{page.nb}"
            parts.append(
                f'<p>Source: <a href="{path}">nbs/{html.escape(page.nb)}</a>. Built offline by <code>tools/site.py</code> '
                f"from the saved outputs.</p>"
            )
        return "".join(parts)

    def page_html(self, page: Page, prev: Page | None, nxt: Page | None, widget_state: str) -> str:
        site_title = html.escape(self.web.get("title", "ucpcl"))
        toc = "".join(
            f'<li class="toc-{lvl}"><a href="#{hid}">{text}</a></li>' for lvl, hid, text in page.toc
        )
        pager = (
            f'<a class="prev" href="{prev.href}" rel="prev"><span>Previous</span>{html.escape(prev.nav)}</a>'
            if prev
            else "<span></span>"
        ) + (
            f'<a class="next" href="{nxt.href}" rel="next"><span>Next</span>{html.escape(nxt.nav)}</a>'
            if nxt
            else "<span></span>"
        )
        widgets = (
            f'<script type="{WIDGET_STATE}">{widget_state}</script>\n<script src="assets/widgets/embed.js"></script>'
            if page.widgets
            else ""
        )
        repo = self.web.get("repo-url")
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tools/site.py (offline build)">
<title>{html.escape(page.title)} – {site_title}</title>
<meta name="description" content="{html.escape(page.subtitle or self.web.get("description", ""))}">
<link rel="stylesheet" href="assets/katex/katex.min.css">
<link rel="stylesheet" href="assets/site.css">
</head>
<body>
<header class="topbar">
  <button class="menu" aria-label="Show the pages" onclick="document.body.classList.toggle('show-nav')">&#9776;</button>
  <a class="brand" href="index.html">{site_title}</a>
  <span class="tagline">{html.escape(self.web.get("description", ""))}</span>
  <div class="search" role="search">
    <input id="search" type="search" placeholder="Search" aria-label="Search the notebooks" autocomplete="off">
    <ol id="search-results" hidden></ol>
  </div>
  {f'<a class="repo" href="{html.escape(repo)}">Repository</a>' if repo else ""}
</header>
<div class="layout">
<nav class="sidebar" aria-label="Notebooks">
{self.sidebar_html(page)}
</nav>
<main class="content" id="content">
<header class="page-header">
<h1 class="title">{html.escape(page.title)}</h1>
{f'<p class="subtitle">{page.subtitle_html}</p>' if page.subtitle_html else ""}
</header>
{page.body}
<nav class="pager" aria-label="Previous and next notebook">{pager}</nav>
<footer class="site-footer">{page.footer_html}</footer>
</main>
<aside class="toc" aria-label="On this page">{f'<div class="toc-title">On this page</div><ol>{toc}</ol>' if toc else ""}</aside>
</div>
<script src="assets/search-index.js"></script>
<script src="assets/site.js"></script>
{widgets}
</body>
</html>
"""

    def build(self, out: Path, strict: bool = False) -> list[str]:
        "Write the site into `out`; return the problems found (missing notebooks, KaTeX errors)."
        t0, problems = time.time(), []
        missing = [f for f in self.files if not (self.nbs / f).exists()]
        problems += [f"_quarto.yml names {f}, which is not in nbs/" for f in missing]
        unnamed = [p.name for p in notebooks(self.nbs) if p.name not in self.files]
        problems += [f"nbs/{f} is not in the sidebar of _quarto.yml" for f in unnamed]
        nbs = {f: nbformat.read(self.nbs / f, as_version=4) for f in self.files if f not in missing}
        for f in missing:
            self.pages.pop(f)
        self.files = [f for f in self.files if f in nbs]
        for f, nb in nbs.items():  # titles first: the sidebar of every page needs them all
            self.pages[f].title = frontmatter(nb)[0] or Path(f).stem
            self.pages[f].nav = self._sidebar_text(f) or self.pages[f].title
        self._index_symbols(nbs)
        for f, nb in nbs.items():
            self.render_page(self.pages[f], nb)
        katex = ensure_katex()
        rendered = typeset(self._math, katex)
        for k, r in enumerate(rendered):
            if "error" in r:
                problems.append(f"KaTeX could not typeset {self._math[k][0]!r}: {r['error']}")
        out = Path(out)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(katex / "dist" / "fonts", out / "assets" / "katex" / "fonts")
        shutil.copy2(katex / "dist" / "katex.min.css", out / "assets" / "katex" / "katex.min.css")
        if any(p.widgets for p in self.pages.values()):
            shutil.copytree(ensure_html_manager(), out / "assets" / "widgets")
        (out / "assets" / "site.css").write_text(SITE_CSS + self.formatter.get_style_defs(".highlight"))
        (out / "assets" / "site.js").write_text(SITE_JS)
        index = []
        order = [self.pages[f] for f in self.files]
        sub = lambda s: _MATH.sub(lambda m: rendered[int(m[1])]["html"], s)
        for k, page in enumerate(order):
            state = json.dumps(nbs[page.nb].metadata.get("widgets", {}).get(WIDGET_STATE, {})).replace(
                "</", "<\\/"
            )
            text = sub(
                self.page_html(
                    page, order[k - 1] if k else None, order[k + 1] if k + 1 < len(order) else None, state
                )
            )
            (out / page.href).write_text(text)
            index.append(
                {
                    "title": page.title,
                    "href": page.href,
                    "subtitle": page.subtitle,
                    "headings": [[hid, re.sub(r"<[^>]+>", "", _MATH.sub("", h))] for _, hid, h in page.toc],
                    "text": page.search_text[:20000],
                }
            )
        (out / "assets" / "search-index.js").write_text("window.UCPCL_SEARCH = " + json.dumps(index) + ";\n")
        (out / ".nojekyll").write_text("")
        print(
            f"offline site: {len(order)} pages, {len(self._math)} formulas typeset by KaTeX, "
            f"{time.time() - t0:.1f}s -> {out / 'index.html'}"
        )
        for p in problems:
            print("warning:", p, file=sys.stderr)
        if strict and problems:
            sys.exit(f"{len(problems)} problem(s); see above")
        return problems


SITE_CSS = r"""
:root { --fg: #212529; --muted: #6c757d; --accent: #2780e3; --bg-code: #f6f8fa; --border: #e3e6ea; --side: 15rem; --toc: 13rem; }
* { box-sizing: border-box; }
html { scroll-padding-top: 4.5rem; }
body { margin: 0; color: var(--fg); font: 16px/1.6 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.topbar { position: sticky; top: 0; z-index: 10; display: flex; align-items: center; gap: 1rem; padding: .55rem 1.2rem;
  background: var(--accent); color: #fff; }
.topbar a { color: #fff; } .brand { font-weight: 700; font-size: 1.15rem; }
.tagline { opacity: .85; font-size: .9rem; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; flex: 1; }
.menu { display: none; background: none; border: 0; color: #fff; font-size: 1.3rem; cursor: pointer; }
.search { position: relative; }
.search input { width: 17rem; padding: .3rem .6rem; border-radius: .3rem; border: 0; font: inherit; font-size: .9rem; }
#search-results { position: absolute; right: 0; top: 2.2rem; width: 28rem; max-height: 70vh; overflow: auto; margin: 0; padding: .3rem 0;
  list-style: none; background: #fff; color: var(--fg); border: 1px solid var(--border); border-radius: .4rem; box-shadow: 0 6px 24px rgba(0,0,0,.15); }
#search-results li a { display: block; padding: .35rem .8rem; color: var(--fg); }
#search-results li a:hover, #search-results li a.selected { background: #eef4fc; text-decoration: none; }
#search-results .where { display: block; color: var(--muted); font-size: .8rem; }
#search-results .none { padding: .35rem .8rem; color: var(--muted); }
.layout { display: grid; grid-template-columns: var(--side) minmax(0, 1fr) var(--toc); max-width: 96rem; margin: 0 auto; }
.sidebar { position: sticky; top: 3.2rem; align-self: start; height: calc(100vh - 3.2rem); overflow-y: auto; padding: 1.2rem 1rem;
  border-right: 1px solid var(--border); font-size: .92rem; }
.sidebar ul { list-style: none; margin: 0 0 .8rem; padding: 0; }
.sidebar li a { display: block; padding: .18rem .6rem; border-radius: .3rem; color: var(--fg); }
.sidebar li a:hover { background: #f1f3f5; text-decoration: none; }
.sidebar li a.active { background: #e7f0fb; color: var(--accent); font-weight: 600; }
.sidebar-section { margin: .4rem 0 .2rem; padding: 0 .6rem; font-size: .75rem; font-weight: 700; letter-spacing: .05em; text-transform: uppercase; color: var(--muted); }
.content { padding: 1.5rem 2rem 2rem; min-width: 0; }
.page-header { margin-bottom: 1.5rem; border-bottom: 1px solid var(--border); }
.title { margin: 0 0 .3rem; font-size: 2.1rem; line-height: 1.2; }
.subtitle { margin: 0 0 1rem; color: var(--muted); font-size: 1.08rem; }
h2 { margin-top: 2.2rem; padding-bottom: .2rem; border-bottom: 1px solid var(--border); } h3 { margin-top: 1.6rem; }
.anchor-link { visibility: hidden; margin-left: .4rem; font-size: .8em; color: var(--muted); }
h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility: visible; }
blockquote { margin: 1rem 0; padding: .5rem 1rem; border-left: 4px solid #c5d9f1; background: #f8fafd; color: #3c4650; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; }
td code { overflow-wrap: anywhere; }
th, td { border: 1px solid var(--border); padding: .3rem .6rem; text-align: left; vertical-align: top; } th { background: #f4f6f8; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; background: var(--bg-code); padding: .05em .3em; border-radius: .25rem; }
a.symbol code { color: var(--accent); }
pre { margin: 0; padding: .7rem 1rem; overflow-x: auto; font-size: .84rem; line-height: 1.45; white-space: pre-wrap; word-break: break-word; }
pre code { background: none; padding: 0; }
.cell { margin: 1rem 0; } .cell.markdown > :first-child { margin-top: 0; }
.cell.markdown pre, .output.markdown pre { background: var(--bg-code); border-radius: .3rem; margin: .8rem 0; }
.cell-input .highlight { background: var(--bg-code); border: 1px solid var(--border); border-left: 3px solid var(--accent); border-radius: .3rem; }
.cell-input .highlight pre { background: none; }
.cell-label { font-size: .78rem; color: var(--muted); margin-bottom: .2rem; }
details.code-fold > summary { cursor: pointer; color: var(--muted); font-size: .88rem; margin-bottom: .3rem; }
.cell-output { margin-top: .4rem; }
.output.stream, .output.text { background: #fff; border-left: 3px solid #dee2e6; color: #343a40; }
.output.stderr { background: #fff8f0; } .output.error { background: #fff1f0; color: #a12020; }
.output.figure img { max-width: 100%; height: auto; display: block; }
.output.html { overflow-x: auto; }
.widget-note { color: var(--muted); font-style: italic; font-size: .88rem; margin: 0 0 .3rem; }
.katex-display { overflow-x: auto; overflow-y: hidden; padding: .2rem 0; }
.pager { display: flex; justify-content: space-between; gap: 1rem; margin: 3rem 0 1.5rem; }
.pager a { flex: 0 1 48%; padding: .6rem .9rem; border: 1px solid var(--border); border-radius: .4rem; }
.pager a span { display: block; font-size: .78rem; color: var(--muted); } .pager .next { text-align: right; margin-left: auto; }
.site-footer { border-top: 1px solid var(--border); padding-top: .8rem; color: var(--muted); font-size: .85rem; }
.site-footer p { margin: .3rem 0; }
.toc { position: sticky; top: 3.2rem; align-self: start; max-height: calc(100vh - 3.2rem); overflow-y: auto; padding: 1.5rem 1rem; font-size: .85rem; }
.toc ol { list-style: none; padding: 0; margin: 0; } .toc li { margin: .2rem 0; } .toc .toc-3 { padding-left: .8rem; }
.toc a { color: var(--muted); } .toc a.current { color: var(--accent); font-weight: 600; }
.toc-title { font-weight: 700; margin-bottom: .4rem; }
@media (max-width: 1200px) { .layout { grid-template-columns: var(--side) minmax(0, 1fr); } .toc { display: none; } }
@media (max-width: 800px) {
  .layout { grid-template-columns: 1fr; } .menu { display: block; } .tagline { display: none; } .search input { width: 10rem; }
  .sidebar { display: none; position: fixed; z-index: 9; background: #fff; width: 80vw; box-shadow: 0 0 24px rgba(0,0,0,.2); }
  body.show-nav .sidebar { display: block; } .content { padding: 1rem; } #search-results { width: 90vw; }
}
"""

SITE_JS = r"""
(function () {
  'use strict';
  var pages = window.UCPCL_SEARCH || [];
  var box = document.getElementById('search'), list = document.getElementById('search-results');
  function esc(s) { return s.replace(/[&<>"]/g, function (c) { return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]; }); }
  function snippet(text, q) {
    var i = text.toLowerCase().indexOf(q);
    return i < 0 ? '' : (i > 40 ? '…' : '') + text.slice(Math.max(0, i - 40), i + 80) + '…';
  }
  function search(query) {
    var words = query.toLowerCase().split(/\s+/).filter(Boolean), hits = [];
    if (!words.length) return hits;
    pages.forEach(function (p) {
      var title = p.title.toLowerCase(), text = (p.subtitle + ' ' + p.text).toLowerCase(), score = 0, ok = true;
      words.forEach(function (w) {
        var s = (title.indexOf(w) >= 0 ? 10 : 0) + (text.indexOf(w) >= 0 ? 1 + text.split(w).length / 50 : 0);
        if (!s && !p.headings.some(function (h) { return h[1].toLowerCase().indexOf(w) >= 0; })) ok = false;
        score += s;
      });
      if (!ok) return;
      hits.push({score: score, href: p.href, label: p.title, where: snippet(p.subtitle + ' ' + p.text, words[0])});
      p.headings.forEach(function (h) {
        var ht = h[1].toLowerCase();
        if (words.every(function (w) { return ht.indexOf(w) >= 0 || title.indexOf(w) >= 0; }) && words.some(function (w) { return ht.indexOf(w) >= 0; }))
          hits.push({score: score + 5, href: p.href + '#' + h[0], label: h[1], where: p.title});
      });
    });
    return hits.sort(function (a, b) { return b.score - a.score; }).slice(0, 12);
  }
  function show(query) {
    var hits = search(query);
    list.hidden = !query.trim();
    list.innerHTML = hits.length ? hits.map(function (h, i) {
      return '<li><a href="' + esc(h.href) + '"' + (i ? '' : ' class="selected"') + '>' + esc(h.label) +
             '<span class="where">' + esc(h.where) + '</span></a></li>';
    }).join('') : '<li class="none">No page mentions “' + esc(query) + '”.</li>';
  }
  if (box && list) {
    box.addEventListener('input', function () { show(box.value); });
    box.addEventListener('keydown', function (e) {
      var first = list.querySelector('a');
      if (e.key === 'Enter' && first) { window.location.href = first.getAttribute('href'); }
      if (e.key === 'Escape') { box.value = ''; list.hidden = true; }
    });
    document.addEventListener('click', function (e) { if (!e.target.closest('.search')) list.hidden = true; });
    var q = new URLSearchParams(window.location.search).get('q');
    if (q) { box.value = q; show(q); }
  }
  var links = Array.prototype.slice.call(document.querySelectorAll('.toc a'));
  var heads = links.map(function (a) { return document.getElementById(a.getAttribute('href').slice(1)); });
  function spy() {
    var k = -1;
    heads.forEach(function (h, i) { if (h && h.getBoundingClientRect().top < 120) k = i; });
    links.forEach(function (a, i) { a.classList.toggle('current', i === k); });
  }
  if (links.length) { window.addEventListener('scroll', spy, {passive: true}); spy(); }
  document.documentElement.setAttribute('data-site-ready', '1');
})();
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=ROOT / "_docs", help="output folder (replaced), default _docs/"
    )
    ap.add_argument(
        "--strict", action="store_true", help="exit non-zero on any problem (unnamed notebook, KaTeX error)"
    )
    a = ap.parse_args(argv)
    print("building the offline site (no Quarto): tools/site.py renders the notebooks' saved outputs")
    Site().build(a.out, strict=a.strict)


if __name__ == "__main__":
    main()
