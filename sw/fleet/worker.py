"""What runs on a Dask worker: one codelet, in its CPU or its int8 accelerator version.

A codelet task receives the results of the codelets it depends on (as Dask futures, resolved by
Dask into values on the worker), runs the prelude and the codelet's statement in a fresh
namespace, and returns a :class:`CodeletResult`: the values it binds, and what it measured (wall
time, accelerator cycles, pickled size of its outputs, where it ran, any fallback, its printed
output).

The int8 version rewrites the codelet's matrix products (``a @ b``, ``np.dot(a, b)``,
``np.matmul(a, b)``, in the statement and in the prelude functions it calls) into calls that build
a one-node ONNX ``MatMul`` graph, quantize it with ``a`` as calibration data, compile it with the
Braze compiler and run it on this worker's simulated device
(:class:`~braze.sw.runtime.InferenceSession`).  Every product is also computed on the CPU and the
accelerator's result is used only if its relative error (``max |int8 - cpu| / max |cpu|``) is
within the codelet's tolerance; otherwise the CPU result is used and the fallback recorded -- never
a silently wrong result.  Products that the accelerator cannot take (not 2-D, not float, empty)
run on the CPU, recorded the same way.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import io
import pickle
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

import numpy as np

from .codelet import Codelet, CodeletError
from .profile import ACCELERATORS

__all__ = ["CodeletTask", "CodeletResult", "run_codelet", "accelerator_matmul"]


@dataclasses.dataclass(frozen=True)
class CodeletTask:
    """Everything a worker needs to run one codelet (small and picklable).

    ``sources`` maps each input name to the position of the dependency result holding it in the
    task's arguments (``-1``: the program's parameters, the first argument).
    """

    program: str
    codelet: Codelet
    prelude: str
    sources: tuple[tuple[str, int], ...]
    version: str = "cpu"
    accelerator: str | None = None
    tolerance: float | None = None
    device: str = "golden"


@dataclasses.dataclass
class CodeletResult:
    """A codelet's outputs and its measurements on the worker."""

    values: dict[str, Any]
    program: str
    codelet: str
    worker: str
    version: str
    seconds: float
    started: float
    finished: float
    output_bytes: int
    serialize_seconds: float
    shapes: dict[str, tuple[int, ...]]
    stdout: str = ""
    cycles: int | None = None
    accelerator_calls: int = 0
    fallback: str | None = None
    address: str = ""


class _Devices:
    """This process's simulated Braze devices, one per accelerator type, each behind a lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._devices: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}

    def get(self, accelerator: str, kind: str) -> tuple[Any, threading.Lock]:
        with self._lock:
            if (accelerator, kind) not in self._devices:
                from braze.sim.device import open_device

                self._devices[accelerator, kind] = (open_device(kind, ACCELERATORS[accelerator]),
                                                    threading.Lock())
            return self._devices[accelerator, kind]


_DEVICES = _Devices()


@functools.lru_cache(maxsize=1)
def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def _matmul_model(b: np.ndarray, m: int):
    """A one-node ONNX graph ``c = a @ B`` with ``B`` a constant (quantized as weights)."""
    _, TensorProto, helper, numpy_helper = _onnx()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "fleet_matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, b.shape[0]])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, b.shape[1]])],
        [numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def accelerator_matmul(a: Any, b: Any, *, accelerator: str, tolerance: float, device: str = "golden",
                       stats: dict | None = None) -> Any:
    """``a @ b`` on a simulated Braze accelerator in int8, within ``tolerance`` of the CPU or the CPU's.

    ``stats`` (a dict) collects ``cycles``, ``calls`` and the ``fallback`` reasons.
    """
    stats = stats if stats is not None else {}
    reference = np.matmul(a, b)

    def fall_back(reason: str):
        stats.setdefault("fallbacks", []).append(reason)
        return reference

    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return fall_back(f"operands are {type(a).__name__} and {type(b).__name__}, not arrays")
    if a.ndim != 2 or b.ndim != 2:
        return fall_back(f"operands of {a.ndim} and {b.ndim} dimensions: the int8 version takes matrices")
    if a.dtype.kind != "f" or b.dtype.kind != "f":
        return fall_back(f"{a.dtype}/{b.dtype} operands: integer products stay exact on the CPU")
    if a.size == 0 or b.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return fall_back("empty or non-finite operands")
    from braze.sw.runtime import InferenceSession

    dev, lock = _DEVICES.get(accelerator, device)
    with lock:          # one program at a time on a device
        session = InferenceSession(_matmul_model(b.astype(np.float32), a.shape[0]), device=dev,
                                   config=dev.config, calibration=a.astype(np.float32), record=False)
        (result,) = session.run(None, {"a": a.astype(np.float32)})
        cycles = session.report().total_cycles
    stats["cycles"] = stats.get("cycles", 0) + int(cycles)
    stats["calls"] = stats.get("calls", 0) + 1
    scale = float(np.abs(reference).max())
    error = float(np.abs(result - reference).max()) / scale if scale > 0 else float(np.abs(result).max())
    if error > tolerance:
        return fall_back(f"int8 result off by {error:.3g} (relative), over the tolerance {tolerance:g}")
    return result.astype(reference.dtype)


class _MatmulToAccelerator(ast.NodeTransformer):
    """``a @ b``, ``np.dot(a, b)`` and ``np.matmul(a, b)`` -> ``__braze_matmul__(a, b)``."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.MatMult):
            call = ast.Call(ast.Name("__braze_matmul__", ast.Load()), [node.left, node.right], [])
            return ast.copy_location(call, node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if name in {"dot", "matmul"} and len(node.args) == 2 and not node.keywords:
            return ast.copy_location(ast.Call(ast.Name("__braze_matmul__", ast.Load()), node.args, []), node)
        return node


@functools.lru_cache(maxsize=512)
def _compiled(text: str, file: str, accelerated: bool):
    tree = ast.parse(text, filename=file)
    if accelerated:
        tree = ast.fix_missing_locations(_MatmulToAccelerator().visit(tree))
    return compile(tree, file, "exec")


def _worker_identity() -> tuple[str, str, dict[str, float]]:
    """(name, address, resources) of the Dask worker running this."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name), str(worker.address), dict(worker.state.total_resources)
    except ValueError:          # not on a Dask worker (called directly)
        return "local", "", {name: 1.0 for name in ACCELERATORS}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in getattr(value, "shape", ()))


def run_codelet(task: CodeletTask, parameters: Mapping[str, Any] | None, *dependencies: CodeletResult
                ) -> CodeletResult:
    """Run one codelet on this worker (the function every codelet's Dask task calls)."""
    codelet = task.codelet
    worker, address, resources = _worker_identity()
    values: dict[str, Any] = {}
    for name, position in task.sources:
        values[name] = (parameters or {})[name] if position < 0 else dependencies[position].values[name]
    printed = io.StringIO()

    def captured_print(*args, **kwargs):
        kwargs.setdefault("file", printed)
        print(*args, **kwargs)

    version, fallback = task.version, None
    if version == "int8" and not resources.get(task.accelerator):
        version, fallback = "cpu", f"worker {worker} owns no {task.accelerator} (retried after a failure?)"
    stats: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__name__": f"__braze_fleet_{task.program}__", "print": captured_print}
    if version == "int8":
        namespace["__braze_matmul__"] = functools.partial(
            accelerator_matmul, accelerator=task.accelerator, tolerance=task.tolerance, device=task.device,
            stats=stats)
    started_wall = time.time()
    started = time.perf_counter()
    # A group runs its statements in order, each as it would run alone: inputs it changes in
    # place are copied first (the producer's value -- here perhaps an earlier statement's -- stays).
    member = codelet
    try:
        exec(_compiled(task.prelude, codelet.file, version == "int8"), namespace)
        namespace.update(values)
        for member in codelet.members or (codelet,):
            for name in member.mutates:
                namespace[name] = copy.deepcopy(namespace[name])
            padded = "\n" * (member.line - 1) + member.source     # its line numbers are the file's
            exec(_compiled(padded, member.file, version == "int8"), namespace)
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == member.file]
        line = frames[-1].lineno if frames else member.line
        source_line = member.source.splitlines()[0]
        if frames and line != member.line:
            # (compiled from strings: linecache has no text, the prelude has it at its line number)
            prelude_lines = task.prelude.splitlines()
            text = prelude_lines[line - 1] if line <= len(prelude_lines) else ""
            if not text.strip() and 0 <= line - member.line < len(member.source.splitlines()):
                text = member.source.splitlines()[line - member.line]
            source_line += f" ... line {line}: {text.strip()}"
        name = member.id if member is codelet else f"{member.id} (in group {codelet.id})"
        raise CodeletError(name, member.file, member.line, source_line,
                           f"{type(error).__name__}: {error}") from None
    seconds = time.perf_counter() - started
    outputs = {name: namespace[name] for name in codelet.outputs if name in namespace}
    pickled = time.perf_counter()
    output_bytes = len(pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL))
    serialize_seconds = time.perf_counter() - pickled
    if stats.get("fallbacks"):
        fallback = "; ".join(sorted(set(stats["fallbacks"])))
    if version == "int8" and not stats.get("calls"):
        version = "cpu"             # every product of the codelet ran on the CPU
    return CodeletResult(outputs, task.program, codelet.id, worker, version if version == "cpu"
                         else task.accelerator, seconds, started_wall, time.time(), output_bytes,
                         serialize_seconds, {name: _shape(value) for name, value in outputs.items()},
                         printed.getvalue(), stats.get("cycles"), stats.get("calls", 0), fallback, address)
