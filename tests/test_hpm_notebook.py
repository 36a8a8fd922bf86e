"""The hardware-performance-model notebook executes and shows calibration, held-out errors and drift."""

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "hpm.ipynb"


def _text(cell) -> str:
    return "".join(output.text if output.output_type == "stream" else
                   output.get("data", {}).get("text/plain", "") for output in cell.get("outputs", []))


@pytest.mark.slow
def test_hpm_notebook_runs_and_shows_the_loop(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is stored without outputs"
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(_text(cell) for cell in code)
    assert "calibration:" in text and "runs recorded" in text
    assert "family (held out)" in text and "held-out MAPE: analytic" in text
    assert "retrain" in text and "mean error before the first retraining" in text
    images = [output for cell in code for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 3          # predicted vs measured, error by family, the drift episode
