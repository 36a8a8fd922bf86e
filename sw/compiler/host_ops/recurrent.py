"""Recurrent layers: RNN, GRU and LSTM (forward, reverse and bidirectional; both layouts)."""

from __future__ import annotations

import numpy as np
from scipy import special

from ._registry import fail, register

_ACTIVATIONS = {
    "sigmoid": lambda x, a, b: special.expit(x),
    "tanh": lambda x, a, b: np.tanh(x),
    "relu": lambda x, a, b: np.maximum(x, 0),
    "hardsigmoid": lambda x, a, b: np.clip(a * x + b, 0, 1),
    "leakyrelu": lambda x, a, b: np.where(x < 0, a * x, x),
    "thresholdedrelu": lambda x, a, b: np.where(x > a, x, 0),
    "scaledtanh": lambda x, a, b: a * np.tanh(b * x),
    "affine": lambda x, a, b: a * x + b,
    "elu": lambda x, a, b: np.where(x < 0, a * np.expm1(x), x),
    "softsign": lambda x, a, b: x / (1 + np.abs(x)),
    "softplus": lambda x, a, b: np.log1p(np.exp(x)),
}
_DEFAULT_ALPHA = {"hardsigmoid": 0.2, "leakyrelu": 0.01, "thresholdedrelu": 1.0, "scaledtanh": 1.0,
                  "affine": 1.0, "elu": 1.0}
_DEFAULT_BETA = {"hardsigmoid": 0.5, "scaledtanh": 1.0, "affine": 0.0}
#: (gates, activations per direction, default activations) of each layer type.
_LAYERS = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}


def _activations(node, directions: int):
    names = node.attrs.get("activations") or list(_LAYERS[node.op_type][1]) * directions
    alphas = list(node.attrs.get("activation_alpha", []))
    betas = list(node.attrs.get("activation_beta", []))
    functions = []
    for index, name in enumerate(names):
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise fail(node, f"activation {name!r} is not supported")
        alpha = alphas[index] if index < len(alphas) else _DEFAULT_ALPHA.get(key, 0.0)
        beta = betas[index] if index < len(betas) else _DEFAULT_BETA.get(key, 0.0)
        functions.append(lambda x, f=_ACTIVATIONS[key], a=alpha, b=beta: f(x, a, b))
    per_direction = len(functions) // directions
    return [functions[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _step(node, kind, x_t, h, c, w, r, wb, rb, p, acts, clip):
    """One time step of one direction: the new hidden state (and cell state for LSTM)."""
    def pre(value):
        return np.clip(value, -clip, clip) if clip is not None else value

    gates_x = x_t @ w.T + wb
    hidden = h.shape[-1]
    if kind == "RNN":
        return acts[0](pre(gates_x + h @ r.T + rb)), None
    if kind == "GRU":
        rz = gates_x[:, :2 * hidden] + h @ r[:2 * hidden].T + rb[:2 * hidden]
        z, reset = acts[0](pre(rz[:, :hidden])), acts[0](pre(rz[:, hidden:]))
        if node.attrs.get("linear_before_reset", 0):
            candidate = gates_x[:, 2 * hidden:] + reset * (h @ r[2 * hidden:].T + rb[2 * hidden:])
        else:
            candidate = gates_x[:, 2 * hidden:] + (reset * h) @ r[2 * hidden:].T + rb[2 * hidden:]
        h_tilde = acts[1](pre(candidate))
        return (1 - z) * h_tilde + z * h, None
    total = gates_x + h @ r.T + rb
    i, o, f, g = (total[:, k * hidden:(k + 1) * hidden] for k in range(4))
    p_i, p_o, p_f = (p[k * hidden:(k + 1) * hidden] for k in range(3))
    i = acts[0](pre(i + p_i * c))
    f = acts[0](pre(f + p_f * c)) if not node.attrs.get("input_forget", 0) else 1 - i
    c_new = f * c + i * acts[1](pre(g))
    o = acts[0](pre(o + p_o * c_new))
    return o * acts[2](c_new), c_new


def _recurrent(node, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
    kind = node.op_type
    gates = _LAYERS[kind][0]
    layout = node.attrs.get("layout", 0)
    if layout:
        x = np.swapaxes(x, 0, 1)
        initial_h = None if initial_h is None else np.swapaxes(initial_h, 0, 1)
        initial_c = None if initial_c is None else np.swapaxes(initial_c, 0, 1)
    steps, batch = x.shape[:2]
    directions = w.shape[0]
    hidden = node.attrs.get("hidden_size", r.shape[-1])
    if b is None:
        b = np.zeros((directions, 2 * gates * hidden), x.dtype)
    if p is None:
        p = np.zeros((directions, 3 * hidden), x.dtype)
    lengths = np.full(batch, steps) if sequence_lens is None else np.asarray(sequence_lens).astype(np.int64)
    clip = node.attrs.get("clip")
    acts = _activations(node, directions)
    direction = node.attrs.get("direction", "forward")
    y = np.zeros((steps, directions, batch, hidden), x.dtype)
    y_h = np.zeros((directions, batch, hidden), x.dtype)
    y_c = np.zeros((directions, batch, hidden), x.dtype)
    for d in range(directions):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        h = np.zeros((batch, hidden), x.dtype) if initial_h is None else initial_h[d]
        c = np.zeros((batch, hidden), x.dtype) if initial_c is None else initial_c[d]
        wb, rb = b[d, :gates * hidden], b[d, gates * hidden:]
        for t in range(steps):
            active = t < lengths                                  # batch entries still running
            # A reversed direction reads each sequence from its own last valid step.
            index = np.where(active, lengths - 1 - t, 0) if reverse else np.full(batch, t)
            x_t = x[index, np.arange(batch)]
            h_new, c_new = _step(node, kind, x_t, h, c, w[d], r[d], wb, rb, p[d], acts[d], clip)
            h = np.where(active[:, None], h_new, h)
            if c_new is not None:
                c = np.where(active[:, None], c_new, c)
            y[index[active], d, np.arange(batch)[active]] = h[active]
        y_h[d], y_c[d] = h, c
    if layout:
        y, y_h, y_c = np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(y_c, 0, 1)
    outputs = (y, y_h, y_c) if kind == "LSTM" else (y, y_h)
    return outputs[:max(len(node.outputs), 1)]


register("RNN", "GRU", "LSTM")(_recurrent)
