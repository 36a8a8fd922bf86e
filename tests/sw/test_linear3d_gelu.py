"""A 3-D ``nn.Linear`` (MatMul, then a quantized bias Add) followed by GELU, as torch exports it and
onnxruntime's QDQ quantizer writes it: the bias joins the product's epilogue and the GELU its
table activation -- one kernel on the chip, nothing of it on the host."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx_models import quantize_qdq, run_ort

from braze.sw.compiler.frontend import evaluate
from braze.sw.runtime import InferenceSession

SHAPE = (2, 5, 16)


def _ffn(residual: bool) -> onnx.ModelProto:
    """Linear(16, 32) -> GELU -> Linear(32, 16) [+ x] on a [batch, tokens, 16] input."""
    import torch

    class FFN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16)

        def forward(self, x):
            y = self.down(torch.nn.functional.gelu(self.up(x)))
            return y + x if residual else y

    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FFN().eval(), torch.randn(*SHAPE), buffer, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("residual", [False, True])
def test_linear_bias_and_gelu_fuse_onto_the_chip(tmp_path, residual):
    rng = np.random.default_rng(0)
    float_model = _ffn(residual)
    model = onnx.load(quantize_qdq(float_model, tmp_path, SHAPE, rng, batches=8))
    session = InferenceSession(model, config="tiny")
    host = {name: place for name, place in session.compiled.placement.items()
            if not place.startswith("accel")}
    host_ops = {session.graph_after.node(name).op_type for name in host if name in session.graph_after}
    assert not host_ops & {"Add", "Div", "Erf", "Mul", "MatMul"}, host
    after = [node for node in session.graph_after.operators() if node.qualified_op == "braze.QMatMul"]
    assert any(node.attrs.get("act") == "table" for node in after)   # GELU in the up-projection's epilogue
    assert all(len(node.inputs) > 2 and node.inputs[2] for node in after)   # both biases in the epilogue
    (last,) = [node for node in model.graph.node if node.output[0] == "y"]
    scale = float(onnx.numpy_helper.to_array(
        next(init for init in model.graph.initializer if init.name == last.input[1])))
    errors = {"braze": [], "onnxruntime": []}
    for _ in range(4):
        x = rng.normal(size=SHAPE).astype(np.float32)
        (y,) = session.run(None, {"x": x})
        assert np.array_equal(y, evaluate(session.graph_before, {"x": x})["y"])
        # onnxruntime's QDQ run rounds after the MatMul and again after the bias Add; the fused kernel
        # rounds once.  So: within two output steps of it, and at least as close to the float model.
        want = run_ort(model, {"x": x})[0]
        assert np.abs(y - want).max() <= 2.01 * scale
        exact = run_ort(float_model, {"x": x})[0]
        errors["braze"].append(np.abs(y - exact).mean())
        errors["onnxruntime"].append(np.abs(want - exact).mean())
    assert np.mean(errors["braze"]) <= 1.02 * np.mean(errors["onnxruntime"]), errors
