"""Generate README.md from nbs/index.ipynb without Quarto (an offline `nbdev-readme`).

Markdown cells are copied, with links to notebooks made relative to the repository root
(`01_uncertainty.ipynb` -> `nbs/01_uncertainty.ipynb`); code cells show their source (minus `#|`
directives) unless `#| hide` or `#| echo: false`, folded into a <details> block when `#| code-fold`
says so; outputs follow as text, Markdown, or PNG files written to docs/readme/.
`python tools/readme.py --check` exits non-zero when README.md is stale.
"""

import base64, re, sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
INDEX, README, IMG_DIR = ROOT / "nbs" / "index.ipynb", ROOT / "README.md", ROOT / "docs" / "readme"
_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
HEADER = (
    "<!-- Generated from nbs/index.ipynb by tools/readme.py: "
    "edit the notebook, then run `make readme`. -->\n\n"
)


def _directives(src: str) -> tuple[dict, str]:
    d, body = {}, []
    for line in src.splitlines():
        m = _DIRECTIVE.match(line)
        if m and not body:
            d[m[1]] = m[2] or "true"
        else:
            body.append(line)
    return d, "\n".join(body).strip()


# a Markdown link to a notebook beside index.ipynb: [text](NN_name.ipynb#anchor)
_NB_LINK = re.compile(r"(\]\()(?![a-z][a-z0-9+.-]*:|/|#|nbs/)([^)\s]+\.ipynb(?:#[^)\s]*)?\))")


def _links(md: str) -> str:
    return _NB_LINK.sub(r"\1nbs/\2", md)


def _text(x):
    return "".join(x) if isinstance(x, list) else x


def _outputs(cell, i: int, images: dict) -> list[str]:
    parts = []
    for k, o in enumerate(cell.get("outputs", [])):
        if o.output_type == "stream":
            parts.append(f"```\n{_text(o.text).rstrip()}\n```")
        elif o.output_type in ("display_data", "execute_result"):
            data = o.get("data", {})
            if "text/markdown" in data:
                parts.append(_links(_text(data["text/markdown"]).strip()))
            elif "image/png" in data:
                name = f"index-cell{i}-{k}.png"
                images[name] = base64.b64decode(_text(data["image/png"]))
                parts.append(f"![]({IMG_DIR.relative_to(ROOT).as_posix()}/{name})")
            elif "text/plain" in data:
                parts.append(f"```\n{_text(data['text/plain']).rstrip()}\n```")
    return parts


def render(nb_path: Path = INDEX) -> tuple[str, dict[str, bytes]]:
    "The README text and the images it references, from the index notebook."
    nb, parts, images = nbformat.read(nb_path, as_version=4), [], {}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            parts.append(_links(cell.source.strip()))
        elif cell.cell_type == "code":
            d, src = _directives(cell.source)
            if "hide" in d:
                continue
            if src and d.get("echo", "true") != "false":
                code = f"```python\n{src}\n```"
                fold = d.get("code-fold", "false")
                if fold in ("true", "show"):
                    details = "<details open>" if fold == "show" else "<details>"
                    code = f"{details}\n<summary>Code</summary>\n\n{code}\n\n</details>"
                parts.append(code)
            if d.get("output", "true") != "false":
                parts += _outputs(cell, i, images)
    return HEADER + "\n\n".join(p for p in parts if p) + "\n", images


def stale() -> list[str]:
    "Files that differ from what `render` produces."
    text, images = render()
    bad = [] if README.exists() and README.read_text() == text else ["README.md"]
    bad += [
        f"docs/readme/{n}"
        for n, b in images.items()
        if not (IMG_DIR / n).exists() or (IMG_DIR / n).read_bytes() != b
    ]
    extra = {p.name for p in IMG_DIR.glob("*.png")} - set(images) if IMG_DIR.exists() else set()
    return bad + [f"docs/readme/{n} (no longer referenced)" for n in sorted(extra)]


def write():
    text, images = render()
    README.write_text(text)
    if IMG_DIR.exists():
        for p in IMG_DIR.glob("*.png"):
            if p.name not in images:
                p.unlink()
    for n, b in images.items():
        IMG_DIR.mkdir(parents=True, exist_ok=True)
        (IMG_DIR / n).write_bytes(b)
    print(f"wrote README.md ({len(text.splitlines())} lines, {len(images)} images)")


if __name__ == "__main__":
    if "--check" in sys.argv:
        if bad := stale():
            sys.exit("README is stale, run `make readme`: " + ", ".join(bad))
        print("README.md is current")
    else:
        write()
