"""Signal processing: the discrete Fourier transform and window functions."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ._registry import register


@register("DFT")
def _dft(node, x, dft_length=None, axis=None):
    # opset 17 has ``axis`` as an attribute (default 1), opset 20 as an input (default -2).
    if axis is not None and np.size(axis):
        axis = int(np.ravel(axis)[0])
    else:
        axis = node.attrs.get("axis", 1)
    axis = axis % (x.ndim - 1) if axis < 0 else axis          # the last dimension holds (re, im)
    signal = x[..., 0] + 1j * x[..., 1] if x.shape[-1] == 2 else x[..., 0].astype(np.complex128)
    length = int(np.ravel(dft_length)[0]) if dft_length is not None and np.size(dft_length) else None
    if node.attrs.get("inverse", 0) and node.attrs.get("onesided", 0):
        # The input is one half of a Hermitian spectrum: the signal is real.
        real = np.fft.irfft(signal, n=length, axis=axis)
        return real[..., None].astype(x.dtype)
    if node.attrs.get("inverse", 0):
        result = np.fft.ifft(signal, n=length, axis=axis)
    else:
        result = np.fft.fft(signal, n=length, axis=axis)
    if node.attrs.get("onesided", 0):
        result = np.take(result, np.arange(result.shape[axis] // 2 + 1), axis=axis)
    return np.stack([result.real, result.imag], axis=-1).astype(x.dtype)


def _window(cosines):
    def apply(node, size):
        n = int(np.ravel(size)[0])
        periodic = node.attrs.get("periodic", 1)
        denominator = n if periodic else n - 1
        k = np.arange(n, dtype=np.float64)
        value = np.zeros(n)
        for index, coefficient in enumerate(cosines):
            value = value + coefficient * np.cos(2 * np.pi * index * k / denominator)
        dtype = helper.tensor_dtype_to_np_dtype(node.attrs.get("output_datatype", 1))
        return value.astype(dtype)
    return apply


register("HannWindow")(_window((0.5, -0.5)))
register("HammingWindow")(_window((25 / 46, -21 / 46)))
register("BlackmanWindow")(_window((0.42, -0.5, 0.08)))
