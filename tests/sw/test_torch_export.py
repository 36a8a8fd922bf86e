"""Models as PyTorch's ``torch.onnx.export`` writes them compile and run, int8 within 1 point of float.

The digits models are trained by the repository's own numpy code; their weights are copied into
equivalent ``torch.nn`` modules, which torch exports (its default, torch.export-based exporter, with
a dynamic batch dimension).
"""

import numpy as np
import onnxruntime
import pytest
import torch

import braze
from braze.sw.compiler.models import calibration_set, load_digits_split, train_cnn, train_mlp


class TorchMLP(torch.nn.Module):
    def __init__(self, params: dict[str, np.ndarray]):
        super().__init__()
        count = len(params) // 2
        self.layers = torch.nn.ModuleList()
        for layer in range(1, count + 1):
            weight = torch.from_numpy(params[f"fc{layer}.weight"].copy())
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
            linear.weight.data, linear.bias.data = weight, torch.from_numpy(params[f"fc{layer}.bias"].copy())
            self.layers.append(linear)

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)


class TorchCNN(torch.nn.Module):
    def __init__(self, params: dict[str, np.ndarray], pad: int):
        super().__init__()

        def conv(name):
            weight = torch.from_numpy(params[f"{name}.weight"].copy())
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=pad)
            module.weight.data, module.bias.data = weight, torch.from_numpy(params[f"{name}.bias"].copy())
            return module

        self.conv1, self.conv2 = conv("conv1"), conv("conv2")
        weight = torch.from_numpy(params["fc.weight"].copy())
        self.fc = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.fc.weight.data, self.fc.bias.data = weight, torch.from_numpy(params["fc.bias"].copy())

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1))


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_torch_exported_model_compiles_and_keeps_its_accuracy(name, digits, tmp_path):
    model, _ = train_mlp(digits) if name == "mlp" else train_cnn(digits)
    net = TorchMLP(model.params) if name == "mlp" else TorchCNN(model.params, model.pad)
    net.eval()
    x_val = model.inputs(digits.x_val).astype(np.float32)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(net, (torch.from_numpy(x_val[:2]),), str(path), dynamo=True,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})

    reference = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = reference.get_inputs()[0].name
    float_logits = reference.run(None, {input_name: x_val})[0]
    # The export is the trained model: same predictions as the numpy forward pass.
    assert np.array_equal(float_logits.argmax(1), model.forward(x_val).argmax(1))
    float_accuracy = float((float_logits.argmax(1) == digits.y_val).mean())

    session = braze.InferenceSession(str(path), device="golden", config="default",
                                     calibration=calibration_set(model, digits))
    int8_logits = session.run(None, {input_name: x_val})[0]
    int8_accuracy = float((int8_logits.argmax(1) == digits.y_val).mean())
    assert float_accuracy > 0.9
    assert int8_accuracy >= float_accuracy - 0.01, (int8_accuracy, float_accuracy)
    report = session.report()
    assert report.total_macs > 0
