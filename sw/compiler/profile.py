"""Run-time profiles of a graph's tensors.

:func:`profile_graph` evaluates a graph on one or more input sets and
records, for the inputs and every intermediate tensor: shape, dtype,
sparsity (fraction of exact zeros), min/max, mean and percentiles.  The
quantizer calibrates activation ranges from it (:meth:`TensorProfile.range`).

Zero blocks: a GEMM kernel that skips all-zero K-blocks of its A operand
(:func:`~braze.sw.compiler.kernels.looped.looped_gemm` ``skip_zero_blocks``) saves
in proportion to the blocks of ``m`` rows by ``rows`` columns that are all
zero, not to the zero elements: :meth:`TensorProfile.zero_block_fraction` gives
that fraction for any block height and for the K-block widths of the presets
(:data:`BLOCK_WIDTHS`), the tensor seen as a matrix of its last axis (the K of
a GEMM reading it) by everything before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .frontend import evaluate
from .ir import Graph

#: Percentiles kept per tensor (of the values over all profiled runs).
PERCENTILES = (0.01, 0.1, 1.0, 50.0, 99.0, 99.9, 99.99)
#: Values kept per tensor for percentiles: more are subsampled with a fixed seed.
SAMPLE_LIMIT = 1 << 18
#: K-block widths (the array heights ``rows`` of the presets) whose zero blocks are recorded.
BLOCK_WIDTHS = (4, 8, 16, 32, 64)


@dataclasses.dataclass
class TensorProfile:
    """Statistics of one tensor over every profiled run."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    count: int = 0
    zeros: int = 0
    min: float = float("inf")
    max: float = float("-inf")
    total: float = 0.0
    _samples: list[np.ndarray] = dataclasses.field(default_factory=list, repr=False)
    # Per K-block width: per run, which (row, K-block) of the tensor as a matrix hold a nonzero.
    _row_blocks: dict[int, list[np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def sparsity(self) -> float:
        """Fraction of elements exactly zero."""
        return self.zeros / self.count if self.count else 0.0

    @property
    def percentiles(self) -> dict[float, float]:
        """:data:`PERCENTILES` of the (sampled) values."""
        samples = self.samples()
        if not samples.size:
            return {}
        return dict(zip(PERCENTILES, (float(v) for v in np.percentile(samples, PERCENTILES)), strict=True))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def range(self, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
        """Calibration range: ``"minmax"`` (observed extremes) or ``"percentile"``
        (the ``100-percentile`` and ``percentile`` percentiles, clipping outliers)."""
        if method == "minmax":
            return self.min, self.max
        if method == "percentile":
            values = self.samples()
            return float(np.percentile(values, 100.0 - percentile)), float(np.percentile(values, percentile))
        raise ValueError(f"calibration method must be 'minmax' or 'percentile', got {method!r}")

    def samples(self) -> np.ndarray:
        return np.concatenate(self._samples) if self._samples else np.zeros(0)

    def zero_block_fraction(self, block_rows: int, block_cols: int) -> float | None:
        """Fraction of the ``block_rows`` x ``block_cols`` blocks that are all zero, over the runs
        recorded; the tensor as a matrix of its last axis by the rest, each run's matrix padded
        with zero rows and columns to whole blocks (as a kernel pads its M tiles).  None when
        it was not recorded: a tensor of one axis, or ``block_cols`` not in :data:`BLOCK_WIDTHS`."""
        if block_rows < 1:
            raise ValueError(f"{self.name}: a block of {block_rows} rows")
        runs = self._row_blocks.get(block_cols)
        if not runs:
            return None
        zero = total = 0
        for nonzero in runs:
            padded = -(-nonzero.shape[0] // block_rows) * block_rows
            rows = np.zeros((padded, nonzero.shape[1]), dtype=bool)
            rows[:nonzero.shape[0]] = nonzero
            blocks = rows.reshape(padded // block_rows, block_rows, -1).any(axis=1)
            zero += int(blocks.size - np.count_nonzero(blocks))
            total += blocks.size
        return zero / total if total else None

    def _add_blocks(self, value: np.ndarray) -> None:
        """Record which (row, K-block) of ``value`` as a matrix hold a nonzero, for every width."""
        if value.ndim < 2 or value.size == 0:
            return
        matrix = value.reshape(-1, value.shape[-1]) != 0
        for width in BLOCK_WIDTHS:
            kept = sum(r.size for r in self._row_blocks.get(width, []))
            if kept >= SAMPLE_LIMIT:
                continue
            columns = -(-matrix.shape[1] // width) * width
            padded = np.zeros((matrix.shape[0], columns), dtype=bool)
            padded[:, :matrix.shape[1]] = matrix
            nonzero = padded.reshape(matrix.shape[0], columns // width, width).any(axis=2)
            self._row_blocks.setdefault(width, []).append(nonzero)

    def add(self, value: np.ndarray, rng: np.random.Generator) -> None:
        if value.shape != self.shape:
            self.shape = tuple(d if d == v else -1 for d, v in zip(self.shape, value.shape, strict=False))
        flat = np.asarray(value).reshape(-1)
        if flat.dtype.kind == "b":
            flat = flat.astype(np.int8)
        if flat.size == 0 or flat.dtype.kind not in "biuf":
            return
        self._add_blocks(np.asarray(value))
        self.count += flat.size
        self.zeros += int(np.count_nonzero(flat == 0))
        self.min = min(self.min, float(flat.min()))
        self.max = max(self.max, float(flat.max()))
        self.total += float(flat.sum(dtype=np.float64))
        kept = sum(s.size for s in self._samples)
        if kept < SAMPLE_LIMIT:
            if flat.size > SAMPLE_LIMIT - kept:
                flat = rng.choice(flat, SAMPLE_LIMIT - kept, replace=False)
            self._samples.append(np.asarray(flat, dtype=np.float64))

    def __str__(self) -> str:
        shape = "x".join("?" if d < 0 else str(d) for d in self.shape)
        return (f"{self.name}: {self.dtype}[{shape}] sparsity {self.sparsity:.1%} "
                f"range [{self.min:.4g}, {self.max:.4g}] mean {self.mean:.4g}")


def profile_graph(graph: Graph, inputs: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
                  *, seed: int = 0) -> dict[str, TensorProfile]:
    """Profile every non-constant tensor of ``graph`` over one input set or several.

    Returns
    -------
    dict of str to TensorProfile
        Keyed by tensor name, in the order tensors are first computed.
    """
    runs: Sequence[Mapping[str, np.ndarray]] = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not runs:
        raise ValueError(f"graph {graph.name!r}: profiling needs at least one input set")
    rng = np.random.default_rng(seed)
    profiles: dict[str, TensorProfile] = {}

    def observe(name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        if name not in profiles:
            profiles[name] = TensorProfile(name, value.shape, value.dtype.name)
        profiles[name].add(value, rng)

    for run in runs:
        evaluate(graph, run, observe=observe)
    return profiles


def format_profiles(profiles: Mapping[str, TensorProfile]) -> str:
    """One line per tensor, for the notebook."""
    return "\n".join(str(p) for p in profiles.values())


__all__ = ["TensorProfile", "profile_graph", "format_profiles", "PERCENTILES", "SAMPLE_LIMIT", "BLOCK_WIDTHS"]
