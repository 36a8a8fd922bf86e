"""The demo's digits models: split, backpropagation, training, ONNX export."""

import numpy as np
import onnx
import pytest

from braze.sw.compiler import models
from braze.sw.compiler.frontend import load_onnx


@pytest.fixture(scope="module")
def data():
    return models.load_digits_split()


@pytest.fixture(scope="module")
def mlp(data):
    return models.train_mlp(data)


@pytest.fixture(scope="module")
def cnn(data):
    return models.train_cnn(data)


def test_split_is_fixed_disjoint_and_complete(data):
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert len(data.x_train) + len(data.x_val) == len(digits.data)
    assert len(data.x_val) == round(0.2 * len(digits.data))
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1] == 64
    assert 0 <= data.x_train.min() and data.x_train.max() <= 1
    # Every image appears once, with its own label, on exactly one side of the split.
    merged = np.concatenate([data.x_train, data.x_val]) * 16
    labels = np.concatenate([data.y_train, data.y_val])
    order = np.lexsort(merged.T)
    reference = np.lexsort(digits.data.T)
    np.testing.assert_array_equal(merged[order], digits.data[reference])
    np.testing.assert_array_equal(labels[order], digits.target[reference])
    # Every class is represented in validation, and a different seed shuffles differently.
    assert set(data.y_val) == set(range(10))
    other = models.load_digits_split(seed=1)
    assert not np.array_equal(other.y_val, data.y_val)


@pytest.mark.parametrize("make", [
    lambda: models.MLP(seed=3),
    lambda: models.CNN(seed=3),
    lambda: models.CNN(channels=(2, 3), pad=1, seed=3),
], ids=["mlp", "cnn", "cnn-padded"])
def test_backpropagation_matches_finite_differences(make, data):
    model = make()
    rng = np.random.default_rng(7)
    # float64 and biases away from zero, so that central differences are accurate and no ReLU sits at 0.
    for name, value in model.params.items():
        model.params[name] = value.astype(np.float64) + rng.normal(0, 0.05, value.shape)
    x, y = data.x_train[:6].astype(np.float64), data.y_train[:6]
    _, grads = model.loss_and_gradients(x, y)
    assert grads.keys() == model.params.keys()
    eps = 1e-6
    for name, param in model.params.items():
        assert grads[name].shape == param.shape
        for flat in rng.choice(param.size, size=min(6, param.size), replace=False):
            index = np.unravel_index(flat, param.shape)
            saved = param[index]
            param[index] = saved + eps
            plus, _ = model.loss_and_gradients(x, y)
            param[index] = saved - eps
            minus, _ = model.loss_and_gradients(x, y)
            param[index] = saved
            assert grads[name][index] == pytest.approx((plus - minus) / (2 * eps), abs=1e-6, rel=1e-4), name


def test_training_reaches_the_accuracy_floor_and_lowers_the_loss(mlp, cnn):
    for model, log in (mlp, cnn):
        assert log.val_accuracy >= 0.95, model.name
        assert log.losses[-1] < log.losses[0] / 5
        assert log.val_accuracy == model.accuracy(models.load_digits_split().x_val,
                                                  models.load_digits_split().y_val)


def test_training_is_deterministic(mlp, cnn, data):
    for (model, log), retrain in ((mlp, models.train_mlp), (cnn, models.train_cnn)):
        again, again_log = retrain(data)
        assert again_log == log
        for name, value in model.params.items():
            np.testing.assert_array_equal(again.params[name], value, err_msg=name)
    # A different seed gives a different network.
    other, _ = models.train_mlp(data, seed=1, epochs=2)
    assert not np.array_equal(other.params["fc1.weight"], mlp[0].params["fc1.weight"])


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_export_is_checked_onnx_equal_to_numpy(which, request, data, tmp_path):
    model, _ = request.getfixturevalue(which)
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 13
    ops = [node.op_type for node in proto.graph.node]
    if which == "mlp":
        assert ops == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    else:
        assert ops == ["Conv", "Relu", "Conv", "Relu", "MaxPool", "Flatten", "Gemm"]
    # A symbolic batch dimension, as exporters write with dynamic axes.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(model.sample_shape)

    path = model.save(tmp_path / f"{which}.onnx")
    difference = models.check_export(model, path, data.x_val)
    assert difference <= 1e-4
    # onnxruntime's answers are the numpy model's answers.
    logits = models.run_onnxruntime(path, model.inputs(data.x_val))
    np.testing.assert_array_equal(logits.argmax(axis=1), model.predict(data.x_val))
    # The compiler's front end imports it without fallback.
    graph = load_onnx(path)
    assert graph.inputs == ("x",) and graph.outputs == ("logits",)


def test_softmax_export_gives_probabilities(mlp, data):
    model, _ = mlp
    probabilities = models.run_onnxruntime(model.to_onnx(softmax=True), model.inputs(data.x_val[:20]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), model.predict(data.x_val[:20]))


def test_check_export_catches_a_wrong_export(mlp, data):
    model, _ = mlp
    proto = model.to_onnx()
    weight = next(init for init in proto.graph.initializer if init.name == "fc3.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[:, 0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(values, "fc3.weight"))
    with pytest.raises(models.ExportMismatch, match="mlp: exported logits differ"):
        models.check_export(model, proto, data.x_val)


def test_calibration_set_comes_from_training_data(cnn, data):
    model, _ = cnn
    calib = models.calibration_set(model, data, samples=50)
    assert calib.shape == (50, 1, 8, 8) and calib.dtype == np.float32
    train_rows = {row.tobytes() for row in data.x_train}
    assert all(row.reshape(-1).tobytes() in train_rows for row in calib)
    np.testing.assert_array_equal(calib, models.calibration_set(model, data, samples=50))
    with pytest.raises(ValueError, match="calibration samples"):
        models.calibration_set(model, data, samples=0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"MLP sizes .* not \(64, 10, 3\)"):
        models.MLP((64, 10, 3))
    with pytest.raises(ValueError, match="pad=2"):
        models.CNN(pad=2)
    with pytest.raises(ValueError, match=r"cnn: expected a batch of 64-pixel samples, got .* \(3, 63\)"):
        models.CNN().forward(np.zeros((3, 63)))
    with pytest.raises(ValueError, match="epochs=0"):
        models.train(models.MLP(), models.load_digits_split(), epochs=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        models.load_digits_split(validation_fraction=1.5)
