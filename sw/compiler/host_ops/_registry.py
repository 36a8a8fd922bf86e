"""The operator table and the helpers every family module shares."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from braze.isa.errors import BrazeError

#: Qualified operator name (``"Conv"``, ``"braze.QMatMul"``) -> implementation ``(node, *inputs)``.
OPS: dict[str, Callable[..., Any]] = {}
#: Qualified operator name -> ``(node, input infos) -> reason or None``: attribute values that no
#: implementation handles, refused when the model is loaded (so the error names the node early).
CHECKS: dict[str, Callable[..., str | None]] = {}


class EvaluationError(BrazeError):
    """A node cannot be evaluated on its inputs."""


def register(*names: str, check: Callable[..., str | None] | None = None):
    """Decorator: the function implements the operators ``names``."""
    def decorate(function):
        for name in names:
            OPS[name] = function
            if check is not None:
                CHECKS[name] = check
        return function
    return decorate


def unsupported_reason(node, infos: Mapping[str, Any]) -> str | None:
    """``None`` when :data:`OPS` implements ``node`` as it is configured, else why not."""
    if node.qualified_op not in OPS:
        return ""
    check = CHECKS.get(node.qualified_op)
    return check(node, infos) if check is not None else None


# -- helpers ----------------------------------------------------------------------------------------

def int64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def axis_shape(values: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """Reshape 1-D per-channel ``values`` to broadcast along ``axis`` of a rank-``rank`` tensor."""
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    shape = [1] * rank
    shape[axis % rank] = values.size
    return values.reshape(shape)


def saturate_to(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(x, info.min, info.max).astype(dtype)


def axes_of(node, rank: int, axes_input: np.ndarray | None = None, attr: str = "axes") -> list[int] | None:
    """The ``axes`` of a node (input, else attribute), normalised to ``0..rank-1``; None if absent."""
    axes = axes_input if axes_input is not None else node.attrs.get(attr)
    if axes is None:
        return None
    return [int(a) % rank if rank else 0 for a in np.ravel(axes)]


def fail(node, message: str) -> EvaluationError:
    return EvaluationError(f"node {node.name!r} ({node.qualified_op}): {message}")
