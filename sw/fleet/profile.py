"""The function profiler: what a codelet computes, and what each target would cost it.

Static analysis of a codelet (its statement and the prelude functions it calls) recognises
computational patterns -- ``matmul`` (``@``, ``np.dot``, ``np.matmul``, ``einsum``, ...), ``conv``,
``fft``, ``hash``, ``io`` and ``elementwise`` -- and :func:`profile_codelet` turns them, with the
shapes of the codelet's inputs when they are known, into a :class:`TargetingProfile`: which
accelerator type and function version to use, how data moves, the estimated execution time and
cost, and the estimated gain of every target against the CPU (transfers included).

Estimates are analytic, in the manner of StarPU's regression models, until measurements exist:

* CPU: ``2 m k n`` flops at :data:`CPU_FLOPS` for matrix work, else a per-AST-node cost;
* accelerator: the GEMM kernel's cycles -- from the learned performance model
  (:mod:`braze.sw.hpm`) where one covers the configuration and device kind, from the timing
  model otherwise -- over the simulator's rate (wall time) and over the stated clock (simulated
  time), plus compiling the int8 graph and moving its operands;
* transfers: pickled bytes over :data:`TRANSFER_BYTES_PER_S`.

The dispatcher (:mod:`.dispatch`) replaces them with measured history as it arrives.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from collections.abc import Mapping

from .codelet import Codelet, Program

__all__ = ["TargetingProfile", "patterns_of", "profile_codelet", "matmul_shape", "ACCELERATORS",
           "CPU_FLOPS", "TRANSFER_BYTES_PER_S", "DEFAULT_CLOCK_HZ"]

#: Accelerator types a heavy-compute fleet can own: Dask resource name -> Braze configuration preset.
ACCELERATORS: dict[str, str] = {"accel-tiny": "tiny", "accel-default": "default"}
#: Analytic CPU throughput of numpy matrix work (flop/s) before anything was measured.
CPU_FLOPS = 2e9
#: Analytic cost of interpreting one AST node of plain Python (seconds) before anything was measured.
SECONDS_PER_NODE = 2e-6
#: Analytic inter-worker transfer rate (pickled bytes per second) before anything was measured.
TRANSFER_BYTES_PER_S = 200e6
#: Fixed cost of fetching one input from another worker (a round trip between Dask workers).
TRANSFER_LATENCY_S = 3e-3
#: Fixed cost of one Dask task around the codelet's body (scheduling, messages, the result's return).
TASK_OVERHEAD_S = 2e-3
#: Cycles per second the golden device simulates (wall time of an accelerator version).
SIMULATED_CYCLES_PER_S = 2e6
#: Fixed host cost of an accelerator version: build, quantize and compile the int8 graph (seconds).
ACCEL_OVERHEAD_S = 0.015
#: The clock at which simulated accelerator time is stated (Hz).
DEFAULT_CLOCK_HZ = 200e6
#: Cost units per second of each target (the CPU is 1: a core-second).
COST_PER_SECOND = {"cpu": 1.0, "accel-tiny": 0.5, "accel-default": 1.5}

_MATMUL_CALLS = frozenset({"dot", "matmul", "einsum", "tensordot", "inner", "vdot"})
_CONV_CALLS = frozenset({"convolve", "correlate", "convolve2d", "correlate2d", "fftconvolve", "oaconvolve",
                         "conv1d", "conv2d"})
_HASH_CALLS = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512", "md5", "blake2b", "blake2s",
                         "sha3_256", "sha3_512", "crc32", "adler32", "hash", "pbkdf2_hmac"})
_IO_CALLS = frozenset({"open", "input", "load", "loadtxt", "save", "savez", "savetxt", "genfromtxt",
                       "fromfile", "tofile", "read", "readlines", "read_text", "read_bytes", "write_text",
                       "write_bytes",
                       "sleep", "urlopen", "listdir", "glob", "iterdir", "stat"})
_ELEMENTWISE_CALLS = frozenset({"exp", "log", "sqrt", "tanh", "maximum", "minimum", "abs", "clip", "where",
                                "sin", "cos", "add", "multiply", "subtract", "divide", "power", "square",
                                "sigmoid", "floor", "ceil", "round", "sign", "astype"})
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.FloorDiv, ast.Mod)
#: Patterns from the most to the least specific: the first one found is the codelet's pattern.
PATTERNS = ("matmul", "conv", "fft", "hash", "io", "elementwise", "scalar")


@dataclasses.dataclass(frozen=True)
class TargetingProfile:
    """Where a codelet should run and what it is expected to cost there.

    Attributes
    ----------
    accelerator_type : str
        ``cpu``, or the accelerator resource (``accel-tiny``, ``accel-default``).
    function_version : str
        ``cpu`` (the codelet as written) or ``int8`` (its matrix products lowered through the
        compiler onto a Braze device, checked against the CPU within the tolerance).
    data_transfer_strategy : str
        ``local`` (inputs are small; run where they are), ``futures`` (inputs move between fleets as
        Dask futures), or ``device`` (operands quantized and written to the accelerator's memory).
    estimated_execution_time : float
        Seconds of wall time on the chosen target, transfers included.
    cost_estimate : float
        Cost units (:data:`COST_PER_SECOND` times seconds).
    pattern : str
        The dominant computational pattern (:data:`PATTERNS`).
    patterns : tuple[str, ...]
        Every pattern found.
    gains : dict[str, float]
        Estimated speedup of each target against the CPU (wall time, transfers included).
    estimates : dict[str, float]
        Estimated wall seconds of each target (``cpu`` and every accelerator it may use).
    matmul : tuple[int, int, int] or None
        (m, k, n) of its matrix product, when the operands' shapes are known.
    simulated_seconds : float or None
        For an accelerator target: its cycles at :data:`DEFAULT_CLOCK_HZ`.
    reason : str
        Why this target.
    """

    accelerator_type: str
    function_version: str
    data_transfer_strategy: str
    estimated_execution_time: float
    cost_estimate: float
    pattern: str
    patterns: tuple[str, ...]
    gains: dict[str, float]
    estimates: dict[str, float]
    matmul: tuple[int, int, int] | None = None
    simulated_seconds: float | None = None
    reason: str = ""


def _call_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _attribute_chain(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts


def patterns_of(tree: ast.AST) -> tuple[str, ...]:
    """Computational patterns a piece of code contains, most specific first (``scalar`` if none)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.MatMult):
                found.add("matmul")
            elif isinstance(node.op, _ARITHMETIC):
                found.add("elementwise")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            chain = _attribute_chain(node.func)
            if name in _MATMUL_CALLS:
                found.add("matmul")
            elif name in _CONV_CALLS:
                found.add("conv")
            elif "fft" in chain or (name or "").startswith(("fft", "ifft", "rfft", "irfft")):
                found.add("fft")
            elif name in _HASH_CALLS or "hashlib" in chain:
                found.add("hash")
            elif name in _IO_CALLS or {"pickle", "json", "csv"} & set(chain) and name in {"load", "dump"}:
                found.add("io")
            elif name in _ELEMENTWISE_CALLS:
                found.add("elementwise")
    return tuple(p for p in PATTERNS if p in found) or ("scalar",)


@functools.lru_cache(maxsize=4096)
def _parse(source: str) -> ast.Module:
    return ast.parse(source)


def codelet_tree(program: Program, codelet: Codelet) -> ast.Module:
    """The codelet's statement and the prelude functions it calls, as one module."""
    prelude = _parse(program.prelude)
    called = [node for node in prelude.body
              if isinstance(node, ast.FunctionDef) and node.name in codelet.calls]
    return ast.Module(body=[*_parse(codelet.source).body, *called], type_ignores=[])


def matmul_shape(tree: ast.AST, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int, int] | None:
    """(m, k, n) of the first matrix product of two named 2-D operands whose shapes are known."""
    for node in ast.walk(tree):
        operands = None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            operands = (node.left, node.right)
        elif isinstance(node, ast.Call) and _call_name(node) in {"dot", "matmul"} and len(node.args) == 2:
            operands = tuple(node.args)
        if operands and all(isinstance(o, ast.Name) and len(shapes.get(o.id, ())) == 2 for o in operands):
            (m, k), (k2, n) = shapes[operands[0].id], shapes[operands[1].id]
            if k == k2:
                return int(m), int(k), int(n)
    return None


@functools.lru_cache(maxsize=1024)
def accelerator_cycles(accelerator: str, m: int, k: int, n: int, device: str = "golden") -> tuple[int, str]:
    """Cycles of an ``m x k @ k x n`` int8 GEMM on an accelerator, and which model said so.

    The learned performance model where one is trained for ``device`` and covers the configuration;
    the ISA timing model otherwise (exact for the golden device, whose counters are that model's).
    """
    from braze.isa import Config
    from braze.sw.compiler import kernels as library

    config = Config.parse(ACCELERATORS[accelerator])
    kernel = library.gemm(config, m, k, n, requant=True)
    if device != "golden":
        from braze.sw.hpm import MemorySystem, kernel_features, load_model

        model = load_model(device)
        if model is not None and model.covers(config, device):
            features = kernel_features(kernel, config, MemorySystem.nominal(config))
            return int(model.predict_features([features])[0].cycles), "hpm-learned"
    return int(kernel.predicted_cycles), "isa-timing"


def _nbytes(shape: tuple[int, ...], itemsize: int = 8) -> int:
    size = 1
    for dim in shape:
        size *= int(dim)
    return size * itemsize


def profile_codelet(program: Program, codelet: Codelet, shapes: Mapping[str, tuple[int, ...]] | None = None,
                    *, accelerators: tuple[str, ...] = tuple(ACCELERATORS), device: str = "golden",
                    clock_hz: float = DEFAULT_CLOCK_HZ) -> TargetingProfile:
    """The targeting profile of one codelet (see the module documentation).

    Parameters
    ----------
    shapes : mapping, optional
        Shapes of the codelet's inputs, where known (matrix estimates need them).
    accelerators : tuple of str
        Accelerator types that exist in the fleets.
    device : str
        The device kind simulating the accelerators (``golden`` or ``verilator``).
    """
    shapes = dict(shapes or {})
    tree = codelet_tree(program, codelet)
    # Inside a called prelude function the operands have its parameters' names: bind them.
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for call in ast.walk(_parse(codelet.source)):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in functions:
            parameters = [a.arg for a in functions[call.func.id].args.args]
            for parameter, argument in zip(parameters, call.args, strict=False):
                if isinstance(argument, ast.Name) and argument.id in shapes:
                    shapes.setdefault(parameter, shapes[argument.id])
    patterns = patterns_of(tree)
    pattern = patterns[0]
    in_bytes = sum(_nbytes(shapes[name]) for name in codelet.inputs if name in shapes)
    transfer = in_bytes / TRANSFER_BYTES_PER_S
    mkn = matmul_shape(tree, shapes) if pattern == "matmul" else None
    if mkn is not None:
        m, k, n = mkn
        cpu_seconds = 2.0 * m * k * n / CPU_FLOPS + codelet.size * SECONDS_PER_NODE
    else:
        cpu_seconds = codelet.size * SECONDS_PER_NODE * codelet.cyclomatic
    strategy = "futures" if in_bytes > 64 * 1024 else "local"
    gains = {"cpu": 1.0}
    estimates = {"cpu": cpu_seconds + transfer}
    best = ("cpu", "cpu", cpu_seconds + transfer, None, "CPU version")
    if pattern == "matmul" and program.tolerance is None:
        best = best[:4] + ("matrix work, but no int8 tolerance was stated: exact CPU version",)
    elif pattern == "matmul" and mkn is None:
        best = best[:4] + ("matrix work of unknown shape: CPU until the operands' shapes are known",)
    elif pattern == "matmul":
        for accelerator in accelerators:
            cycles, _ = accelerator_cycles(accelerator, *mkn, device=device)
            wall = ACCEL_OVERHEAD_S + cycles / SIMULATED_CYCLES_PER_S + transfer
            gains[accelerator] = (cpu_seconds + transfer) / wall
            estimates[accelerator] = wall
            if wall < best[2]:
                best = (accelerator, "int8", wall, cycles / clock_hz,
                        f"int8 within tolerance {program.tolerance:g}: {cycles} cycles")
        if not accelerators:
            best = best[:4] + ("matrix work, but no accelerator in the fleets: CPU version",)
        elif best[0] == "cpu":
            best = best[:4] + (f"the CPU is faster in wall time than the simulated accelerators "
                               f"(best gain {max(v for t, v in gains.items() if t != 'cpu'):.2g}x)",)
    accelerator, version, seconds, simulated, reason = best
    if version == "int8":
        strategy = "device"
    return TargetingProfile(accelerator, version, strategy, seconds,
                            seconds * COST_PER_SECOND.get(accelerator, 1.0), pattern, patterns, gains,
                            estimates, mkn, simulated, reason)
