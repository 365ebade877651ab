"Every notebook in nbs/ executes headlessly with papermill: one test case per notebook."

import pytest
from nbrun import NotebookFailed, notebooks, run_notebook

# Parameters passed to notebooks under test, on top of their (already small) defaults.
PARAMETERS: dict[str, dict] = {
    "17_final.ipynb": {
        "iterations": 4,
        "batch_size": 8,
        "labeled_bs": 4,
    },  # the GPU notebook, at a smoke-test size
}
# Wall-time budget per notebook under the test suite, in seconds.
BUDGET = {"default": 120}


@pytest.mark.notebook
@pytest.mark.parametrize("nb", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(nb, tmp_path):
    try:
        _, seconds = run_notebook(nb, tmp_path, PARAMETERS.get(nb.name))
    except NotebookFailed as e:
        pytest.fail(str(e), pytrace=False)
    budget = BUDGET.get(nb.name, BUDGET["default"])
    assert seconds < budget, f"{nb.name} took {seconds:.0f}s under the test suite (budget {budget}s)"
