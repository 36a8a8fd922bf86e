"""The zoo's models exported to ONNX by both of torch's exporters and quantized by onnxruntime.

* :func:`export` -- ``torch.onnx.export`` with ``dynamo=False`` (the TorchScript-based exporter,
  ``"torchscript"``) or ``dynamo=True`` (the torch.export-based one, ``"dynamo"``); opset 17 and a
  dynamic batch dimension either way, input ``x``, output ``logits``.
* :func:`quantize_qdq` -- onnxruntime's ``quantize_static``: QDQ format, uint8 activations,
  per-channel int8 weights, calibrated on :data:`CALIBRATION_IMAGES` digits training images.

Both are deterministic for a given torch/onnxruntime, and cached in memory per process.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

from braze.isa.errors import BrazeError

from .models import _torch, build_model, digits_images

__all__ = ["EXPORTERS", "OPSET", "INPUT", "OUTPUT", "CALIBRATION_IMAGES", "ExportError", "export",
           "quantize_qdq", "calibration_images"]

EXPORTERS = ("torchscript", "dynamo")
OPSET = 17
INPUT, OUTPUT = "x", "logits"
#: Training images onnxruntime's quantizer calibrates on (the first ones of the training split).
CALIBRATION_IMAGES = 128


class ExportError(BrazeError):
    """torch could not export a zoo model (names the model, the exporter and torch's error)."""


def _check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise BrazeError(f"exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")


@functools.cache
def _export_bytes(name: str, exporter: str) -> bytes:
    torch = _torch()
    model = build_model(name)
    example = torch.from_numpy(np.array(digits_images()[0][:2]))
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as directory:
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        path = Path(directory) / f"{name}.onnx"
        try:
            if exporter == "torchscript":
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=OPSET,
                                  input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
            else:
                torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET,
                                  input_names=[INPUT], output_names=[OUTPUT],
                                  dynamic_shapes={INPUT: {0: torch.export.Dim("batch")}}, verbose=False)
        except Exception as error:      # torch raises many types; the message is what matters
            raise ExportError(f"zoo model {name!r}: torch.onnx.export ({exporter}) failed: "
                              f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                              ) from error
        # The dynamo exporter may keep weights in a side file: load them into one self-contained proto.
        return onnx.load(str(path), load_external_data=True).SerializeToString()


def export(name: str, exporter: str = "dynamo") -> onnx.ModelProto:
    """The float ONNX model of zoo model ``name`` as ``exporter`` writes it (dynamic batch)."""
    _check_exporter(exporter)
    return onnx.load_from_string(_export_bytes(name, exporter))


def calibration_images(count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """The first ``count`` training images, ``(count, 1, 16, 16)`` float32: the calibration set."""
    return np.array(digits_images()[0][:count])


@functools.cache
def _quantized_bytes(name: str, exporter: str) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = calibration_images()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT: images[i:i + 16]} for i in range(0, len(images), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)      # the quantizer logs advice at WARNING
        source, target = Path(directory) / "float.onnx", Path(directory) / "qdq.onnx"
        onnx.save(export(name, exporter), source)
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        return target.read_bytes()


def quantize_qdq(name: str, exporter: str = "dynamo") -> onnx.ModelProto:
    """Zoo model ``name`` from ``exporter``, quantized by onnxruntime's ``quantize_static`` (QDQ,
    per-channel int8 weights, uint8 activations, calibrated on :func:`calibration_images`)."""
    _check_exporter(exporter)
    return onnx.load_from_string(_quantized_bytes(name, exporter))
