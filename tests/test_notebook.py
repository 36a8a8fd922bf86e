"""The walkthrough notebook executes from top to bottom and shows each step of the flow."""

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "braze_walkthrough.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is stored without outputs"
    workdir = tmp_path_factory.mktemp("notebook")
    # Verilator included: its build of the default configuration is shared with the device tests.
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    # The notebook writes its models under tempfile's directory; the kernel inherits TMPDIR, so they
    # land in pytest's temporary tree rather than in /tmp, where every run left a directory behind.
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(workdir)
    try:
        client.execute()     # raises CellExecutionError, with the cell and traceback, if any cell fails
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    return notebook


@pytest.mark.slow
def test_notebook_runs_every_cell_without_errors(executed):
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count for cell in code)
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]


@pytest.mark.slow
def test_notebook_shows_each_step(executed):
    text = "\n".join(_text(cell) for cell in executed.cells if cell.cell_type == "code")
    # 1-2: training and export.
    assert "float validation accuracy" in text
    assert "mlp: onnxruntime equals numpy" in text and "cnn: onnxruntime equals numpy" in text
    # 3-5: the IR, quantized, before and after fusion.
    assert "graph braze_digits_cnn" in text and "braze.QConv" in text
    assert "Fusion decisions:" in text and "predicted gain" in text
    assert "Per operator (fuse=False):" in text and "Fused:" in text
    # 6: assembly of a kernel.
    assert "matmul " in text and "epilogue " in text
    # 7: accuracies of both models, float and int8.
    assert "mlp " in text and "cnn " in text and "int8" in text
    # 8: counter tables and the fusion gain from counters.
    assert text.count("PE util") >= 2 and "DMA rd B" in text
    assert "fewer cycles" in text and "fewer external-memory bytes" in text
    # 9: Verilator against golden.
    assert "verilator vs golden on 16 samples: bit-identical" in text
    images = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 3          # training curves, graphs before/after fusion, fused vs unfused
