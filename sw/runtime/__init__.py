"""The runtime: compiled models run on a Braze device.

* :mod:`.session` — :class:`InferenceSession`, compile and run in onnxruntime's manner;
* :mod:`.runtime` — :class:`Runtime`, which executes a compiled model's plan on a device;
* :mod:`.backend` — :class:`BrazeBackend`, an ``onnx.backend`` backend over sessions;
* :mod:`.bench` — ``braze bench model``.

The runtime imports :mod:`braze.sw.compiler`; never the reverse.  The names below are
imported on first use (the compiler pulls in onnx and networkx).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import BrazeBackend
    from .runtime import KernelReport, RunReport, Runtime
    from .session import InferenceSession, InputError

__all__ = ["InferenceSession", "InputError", "Runtime", "RunReport", "KernelReport", "BrazeBackend"]

#: Public name -> the module that defines it (the names of ``__all__``).
_EXPORTS = {
    "InferenceSession": "session",
    "InputError": "session",
    "Runtime": "runtime",
    "RunReport": "runtime",
    "KernelReport": "runtime",
    "BrazeBackend": "backend",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
