"""The method of Eq. 1 on a toy batch (every term switchable, the warm-up, the queue), and the import
structure: each module imports alone, and no module of the package imports, directly or not, one that
imports it."""

import ast, subprocess, sys
from pathlib import Path

import pytest
import torch

import ucpcl.method as method_module
from ucpcl.core import seed_everything
from ucpcl.method import UCPCL, MethodConfig
from ucpcl.models import get_preset

PKG = Path(method_module.__file__).parent
TINY = get_preset("small", img_size=32).replace(in_channels=1, num_classes=4)
TOY = dict(batch_size=4, labeled_bs=2, per_class=8, memory_size=16, iterations=6, contrast_start=0.5)


def toy_batch(seed: int = 0) -> dict:
    "Two labeled and two unlabeled 32 x 32 images of four classes in blocks of 8 x 8 pixels."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (4, 4, 4), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    x = (y / 3 + 0.1 * torch.randn(y.shape, generator=g))[:, None]
    return {"image": x, "label": torch.cat([y[:2], torch.full_like(y[2:], -1)]), "monitor_label": y}


def steps(cfg: MethodConfig, n: int) -> tuple[UCPCL, list[dict]]:
    "n SGD steps on the toy batch: the terms of each as floats, and the queue's size before and after it."
    seed_everything(0)
    m, batch, out = UCPCL(cfg, TINY), toy_batch(), []
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    for it in range(n):
        terms = m.training_step(batch, it)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        before = len(m.queue)
        m.after_step(it)
        floats = {k: float(torch.as_tensor(v).detach()) for k, v in terms.items()}
        out.append(floats | {"before": before, "after": len(m.queue)})
    return m, out


@pytest.mark.parametrize(
    "switches",
    [dict(), dict(use_con=False), dict(use_rot=False), dict(rotation_form="all"), dict(contrast="labeled")],
)
def test_the_loss_is_eq_1_and_a_switched_off_term_is_zero(switches):
    cfg = MethodConfig(**TOY, **switches)
    _, rows = steps(cfg, 5)
    start = round(cfg.contrast_start * cfg.iterations)
    for it, r in enumerate(rows):
        eq1 = r["l_sup"] + r["lambda_t"] * r["l_con"] + cfg.lambda_1 * r["l_c"] + cfg.lambda_2 * r["l_e"]
        assert r["loss"] == pytest.approx(eq1, rel=1e-6)
        assert (r["l_con"] > 0) == cfg.use_con and (r["l_e"] > 0) == cfg.use_rot
        assert (r["l_c"] > 0) == (it > start), (it, r["l_c"])  # the first contrast step meets an empty queue


def test_the_queue_grows_only_in_after_step():
    cfg = MethodConfig(**TOY)
    m, rows = steps(cfg, 5)
    start = round(cfg.contrast_start * cfg.iterations)
    assert [r["before"] for r in rows[1:]] == [r["after"] for r in rows[:-1]]  # unchanged between steps
    assert all(r["after"] == 0 for r in rows[:start]) and rows[start]["before"] == 0 < rows[start]["after"]
    assert rows[start]["after"] == rows[start]["anchors"]  # the anchors of the step, and nothing else


def test_contrast_none_never_computes_the_contrast(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("contrast_labels was called")

    monkeypatch.setattr(method_module, "contrast_labels", forbidden)
    m, rows = steps(MethodConfig(**{**TOY, "contrast_start": 0.0}, contrast="none"), 3)
    assert all(r["l_c"] == 0 and "anchors" not in r for r in rows) and len(m.queue) == 0


MODULES = ["method", "baselines", "cotraining", "train", "cli", "compare"]


@pytest.mark.parametrize("first", MODULES[:4])
def test_each_module_imports_alone_and_the_method_side_never_loads_the_trainer(first):
    "A fresh interpreter imports `first` alone, then the others in turn."
    code = [f"import sys, ucpcl.{first}"]
    if first in ("method", "baselines", "cotraining"):
        code.append("assert 'ucpcl.train' not in sys.modules, 'the method side imported the trainer'")
    code += [f"import ucpcl.{m}" for m in MODULES if m != first]
    r = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def _imports(path: Path) -> set[str]:
    "The modules of the package that `path` imports at any level of its code."
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ucpcl."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "ucpcl":
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ucpcl.")}
    return names & {p.stem for p in PKG.glob("*.py")}


def test_no_import_cycle():
    "The package's import graph (lazy imports inside functions included) has no cycle."
    graph = {p.stem: _imports(p) for p in PKG.glob("*.py") if p.stem != "_modidx"}
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) != "done":
            state[m] = "open"
            for n in sorted(graph[m]):
                visit(n, [*path, m])
            state[m] = "done"

    for m in sorted(graph):
        visit(m, [])
    assert {"baselines", "cotraining"} <= graph["train"] and "train" not in graph["baselines"] | graph[
        "method"
    ]
