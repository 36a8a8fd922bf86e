"""The model zoo (issue 11): real model shapes built here, exported by torch, quantized by onnxruntime.

Four models in torch, small enough for the verilator device (:mod:`.models`): a ResNet-18-style
CNN, a MobileNetV2-style CNN, a 2-layer transformer encoder and an MLP-Mixer, all reading
scikit-learn's digits at 16x16, all trained briefly (weights cached under
``$BRAZE_CACHE_DIR/zoo``).  Each is exported by both of torch's exporters and quantized by
onnxruntime's ``quantize_static`` (:mod:`.export`);
:func:`model_report` compiles one and says where its MACs run, which operators stay on the host
and why, whether the golden device, the verilator device and the frontend evaluator agree bit for
bit, and how its outputs compare with onnxruntime's run of the same QDQ model.
``braze bench zoo`` (:mod:`.bench`) runs them all.

Nothing in the compiler or runtime imports this package; it needs torch (a development dependency).
"""

from .export import CALIBRATION_IMAGES, EXPORTERS, ExportError, calibration_images, export, quantize_qdq
from .models import MODEL_NAMES, ZOO, ZooSpec, build_model, digits_images, weights_path
from .report import (
    ACCURACY_MARGIN,
    AGREEMENT_TARGET,
    CHIP_MAC_TARGETS,
    HostOps,
    MacPlacement,
    ModelReport,
    count_macs,
    format_reports,
    mac_placement,
    model_report,
    node_macs,
)

__all__ = ["MODEL_NAMES", "ZOO", "ZooSpec", "build_model", "digits_images", "weights_path", "EXPORTERS",
           "ExportError", "export", "quantize_qdq", "calibration_images", "CALIBRATION_IMAGES", "HostOps",
           "MacPlacement", "mac_placement", "ModelReport", "count_macs", "node_macs", "model_report",
           "format_reports", "AGREEMENT_TARGET", "ACCURACY_MARGIN", "CHIP_MAC_TARGETS"]
