"""Packing queued requests: several small requests as one batch, so their GEMMs run as one kernel.

A batch-1 request of a small model runs kernels of one row each (M = 1), dominated by fixed costs:
the weights' shift into the array, fill and drain, the snapshot.  :func:`run_packed` stacks the
inputs of queued requests along the batch axis, runs the session once -- each GEMM then has one
row per request and loads and shifts its weights once for all -- and splits every output back per
request.  It relies on the ONNX convention that a symbolic leading dimension is the batch of
independent samples; a model input with a fixed leading dimension, or an output whose leading
dimension is not the packed batch, is refused with :class:`~braze.sw.runtime.session.InputError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .session import InferenceSession, InputError

__all__ = ["run_packed"]


def run_packed(session: InferenceSession, requests: Sequence[Mapping[str, np.ndarray]],
               output_names: Sequence[str] | None = None) -> list[list[np.ndarray]]:
    """Run ``requests`` (each an input feed as :meth:`InferenceSession.run` takes) as one batch;
    returns per request its outputs (``output_names``, all with None), as separate runs would."""
    if not requests:
        raise InputError("run_packed: no requests")
    inputs = session.get_inputs()
    for arg in inputs:
        if not arg.shape or isinstance(arg.shape[0], int):
            raise InputError(f"run_packed: input {arg.name!r} has no symbolic batch dimension (shape "
                             f"{arg.shape}); requests cannot be stacked along it")
    sizes = []
    for number, feed in enumerate(requests):
        if not isinstance(feed, Mapping) or set(feed) != {arg.name for arg in inputs}:
            raise InputError(f"run_packed: request {number} must map exactly the inputs "
                             f"{[arg.name for arg in inputs]}")
        leading = {np.shape(feed[arg.name])[0] if np.ndim(feed[arg.name]) else None for arg in inputs}
        if len(leading) != 1 or None in leading:
            raise InputError(f"run_packed: request {number}'s inputs disagree on their batch size "
                             f"({leading})")
        sizes.append(leading.pop())
    stacked = {arg.name: np.concatenate([np.asarray(feed[arg.name]) for feed in requests]) for arg in inputs}
    outputs = session.run(output_names, stacked)
    total = sum(sizes)
    names = list(output_names) if output_names else [arg.name for arg in session.get_outputs()]
    for name, value in zip(names, outputs, strict=True):
        if np.ndim(value) == 0 or np.shape(value)[0] != total:
            raise InputError(f"run_packed: output {name!r} has shape {np.shape(value)}, not a leading "
                             f"batch of {total}; its samples cannot be split per request")
    bounds = np.cumsum([0] + sizes)
    return [[value[start:end] for value in outputs]
            for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
