"""Braze: a hardware-software co-design framework for an int8 systolic accelerator."""

from braze.isa import BrazeError, Config, ConfigError

__version__ = "0.1.0"
__all__ = ["BrazeError", "Config", "ConfigError", "InferenceSession", "__version__"]


def __getattr__(name: str):
    # The compiler pulls in onnx and networkx: import it only when a session is asked for.
    if name == "InferenceSession":
        from braze.sw.runtime.session import InferenceSession

        return InferenceSession
    raise AttributeError(f"module 'braze' has no attribute {name!r}")
