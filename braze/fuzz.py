"""Property-based fuzzing of the places where user input enters Braze (``braze bench fuzz``).

Each :class:`Target` pairs a hypothesis strategy for one kind of input with the code that takes
such input from users: the assembler, the disassembler, the configuration parser, the ONNX loader
and :meth:`~braze.sw.runtime.session.InferenceSession.run`.  The property is the same for all: the
code returns, or raises a :class:`~braze.isa.errors.BrazeError` (which the command line prints as
one clear line) -- never another exception (a *crash*: a bug in Braze) and never runs past a
deadline (a *hang*).  Where the code returns, a target checks what it returned too (a program
disassembles to text that assembles back to it; outputs of a run are finite), and a violation is
a crash as well.

The test suite runs every target for a bounded number of examples (``tests/test_fuzz.py``, through
:func:`property_test`); ``braze bench fuzz --minutes N`` runs them round-robin for N minutes
(:func:`main`) and reports the counts per target, ending with ``fuzz: cases=<n> crashes=<n>
hangs=<n>``.  Inputs are random but reproducible from ``--seed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import signal
import sysconfig
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from braze.isa.errors import ArgumentParser, BrazeError

__all__ = ["TARGETS", "Target", "Outcome", "check", "property_test", "run_campaign", "main"]

OK, ERROR, CRASH, HANG = "ok", "error", "crash", "hang"


class _Hang(BaseException):
    """Raised by the deadline's alarm; a BaseException, so that ``except Exception`` does not catch it."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with :class:`_Hang` after ``seconds`` (main thread only; elsewhere no deadline)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one case did: ``kind`` is ok, error (a BrazeError), crash or hang; ``detail`` says more."""

    kind: str
    detail: str = ""


def _crash_signature(error: BaseException) -> str:
    """Exception type, message and the innermost frame in Braze's code: one line per distinct bug."""
    frames = traceback.extract_tb(error.__traceback__)
    # The innermost frame outside the libraries and the standard library (and past this harness).
    libraries = (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"], __file__)
    ours = [frame for frame in frames
            if frame.filename.startswith("/") and not frame.filename.startswith(libraries)] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} in {ours[-1].name}" if ours else "?"
    message = " ".join(str(error).split())[:160]
    return f"{type(error).__name__} at {where}: {message}"


@dataclasses.dataclass(frozen=True)
class Target:
    """One fuzzing target: a strategy of cases and ``run(case)``, which raises on a wrong result."""

    name: str
    what: str
    strategy: Callable[[], Any]
    run: Callable[[Any], None]


def check(target: Target, case: Any, *, timeout: float = 10.0) -> Outcome:
    """Run one case of ``target`` under a deadline and classify what happened."""
    try:
        with warnings.catch_warnings(), _deadline(timeout):
            warnings.simplefilter("ignore")
            target.run(case)
    except _Hang:
        return Outcome(HANG, f"no result within {timeout:g} s")
    except BrazeError as error:
        return Outcome(ERROR, str(error).splitlines()[0] if str(error) else type(error).__name__)
    except Exception as error:   # anything else is a bug: what the fuzzer is for
        return Outcome(CRASH, _crash_signature(error))
    return Outcome(OK)


# ---------------------------------------------------------------------------------------------------
# The assembler and the disassembler
# ---------------------------------------------------------------------------------------------------

@functools.cache
def _sample_programs() -> tuple[tuple[Any, ...], ...]:
    """Valid programs to mutate: random programs of the generator on two presets, and the sample."""
    from importlib import resources

    from braze.isa import Config
    from braze.isa.asm import assemble
    from braze.sim.progen import generate

    programs = [generate(Config.preset(name), seed, size=2).instructions
                for name in ("tiny", "default") for seed in range(3)]
    sample = resources.files("braze").joinpath("examples", "fused_gemm.s").read_text()
    programs.append(tuple(assemble(sample, defines=Config.preset("default").asm_constants())))
    return tuple(programs)


@functools.cache
def _sample_lines() -> tuple[str, ...]:
    from braze.isa.asm import disassemble

    return tuple(line for program in _sample_programs() for line in disassemble(list(program)).splitlines())


_ASM_ALPHABET = "abcdefghijklmnopqrstuvwxyz_ABCDEFGHIKLMNOPRSTUVWXYZ0123456789 \t\n=,:.#;()+-*/%<>&|^~$x"
_ASM_TOKENS = ("load", "store", "matmul", "epilogue", "vector", "config", "fence", "counters", "halt",
               "mem=spad", "mem=acc", "dram=", "stride=", "rows=", "len=", "addr=", "zero", "push_next",
               "pop_prev", ".equ", "N", "=", ",", ":", "(", ")", "<<", ">>", "-", "~", "0x", "0b", "0o",
               "_", "1", "-1", "65535", "4294967296", "1 << 100", "act=relu", "op=max", "use_imm", "#",
               "\n", "label:", "label", "\u00e9", "\x00")


def _asm_strategy():
    from hypothesis import strategies as st

    line = st.sampled_from(_sample_lines())
    edit = st.tuples(st.integers(0, 400), st.integers(0, 12), st.sampled_from(_ASM_TOKENS))

    @st.composite
    def mutated(draw) -> bytes:
        lines = draw(st.lists(line, min_size=1, max_size=12))
        text = "\n".join(lines)
        for position, cut, token in draw(st.lists(edit, max_size=6)):
            position %= len(text) + 1
            text = text[:position] + token + text[position + cut:]
        data = text.encode()
        if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:     # now and then, a byte that is not UTF-8
            position = draw(st.integers(0, len(data)))
            data = data[:position] + bytes([draw(st.integers(0x80, 0xff))]) + data[position:]
        return data

    defines = st.dictionaries(st.sampled_from(["N", "ROWS", "COLS", "BASE", "label"]),
                              st.integers(-(1 << 40), 1 << 40), max_size=3)
    return st.tuples(st.one_of(st.text(_ASM_ALPHABET, max_size=160).map(str.encode), mutated()), defines)


def _run_asm(case: tuple[bytes, dict]) -> None:
    from braze.isa.asm import assemble, decode_source, disassemble

    data, defines = case
    program = assemble(decode_source(data, filename="fuzz.s"), filename="fuzz.s", defines=defines)
    again = assemble(disassemble(program))
    if again != program:
        raise AssertionError(f"disassembly of {len(program)} instructions assembles to a different program")


def _disasm_strategy():
    from hypothesis import strategies as st

    from braze.isa.encoding import encode_program

    blobs = [encode_program(list(program)) for program in _sample_programs()]

    @st.composite
    def mutated(draw) -> bytes:
        blob = bytearray(draw(st.sampled_from(blobs)))
        words = len(blob) // 16
        start = draw(st.integers(0, max(0, words - 1)))
        blob = blob[start * 16:(start + draw(st.integers(1, 6))) * 16]
        for _ in range(draw(st.integers(0, 4))):
            bit = draw(st.integers(0, len(blob) * 8 - 1))
            blob[bit // 8] ^= 1 << (bit % 8)
        if draw(st.integers(0, 7)) == 0:
            blob = blob[:draw(st.integers(0, len(blob)))]
        return bytes(blob)

    return st.one_of(st.binary(max_size=64), mutated())


def _run_disasm(blob: bytes) -> None:
    from braze.isa.asm import assemble_bytes, disassemble

    text = disassemble(blob)
    if assemble_bytes(text) != blob:
        raise AssertionError(f"{len(blob)} bytes disassemble to text that assembles to other bytes")


# ---------------------------------------------------------------------------------------------------
# Configurations
# ---------------------------------------------------------------------------------------------------

def _config_strategy():
    from hypothesis import strategies as st

    from braze.isa.config import PRESETS, Config

    fields = [field.name for field in dataclasses.fields(Config)]
    name = st.sampled_from(fields + ["bogus", "", " rows"])
    number = st.one_of(st.integers(-4, 1 << 34), st.sampled_from([0, 1, 3, 1000, 1 << 16, 1 << 20, 1 << 32]),
                       st.integers(-(1 << 70), 1 << 70))
    value = st.one_of(number.map(str), number.map(lambda n: hex(n) if n >= 0 else str(n)),
                      st.text("0123456789abcdefx_-+ .e", max_size=8))
    override = st.builds(lambda k, v: f"{k}={v}", name, value)
    spec = st.builds(lambda preset, items: f"{preset}:{','.join(items)}" if items else preset,
                     st.sampled_from([*PRESETS, "huge", ""]), st.lists(override, max_size=4))
    scalar = st.one_of(number, st.floats(allow_nan=True), st.text(max_size=6), st.booleans(), st.none())
    values = st.one_of(scalar, st.lists(scalar, max_size=2))
    as_json = st.dictionaries(name, values, max_size=5).map(json.dumps)
    return st.one_of(spec, as_json, st.text(max_size=40))


def _run_config(text: str) -> None:
    from braze.isa.config import Config
    from braze.sim.axi_ram import AXIRam
    from braze.sim.progen import generate

    config = Config.parse(text)
    if Config.from_dict(config.to_dict()) != config or config.asm_constants()["ROWS"] != config.rows:
        raise AssertionError(f"config {config.name!r} does not survive to_dict/from_dict")
    # What the Config accepted, the back ends must take: the simulated memory and a random program.
    ram = AXIRam(size=config.dram_bytes, data_width=config.dma_bus_bits, read_latency=config.mem_latency)
    # Built only to see that it can be: silence Amaranth's warning about elaboratables never used
    # (it fires on garbage collection, long after check() stopped ignoring warnings).
    for built in (ram, getattr(ram, "memory", None)):
        if built is not None:
            built._MustUse__silence = True
    generate(config, 0, size=1)


# ---------------------------------------------------------------------------------------------------
# ONNX models
# ---------------------------------------------------------------------------------------------------

@functools.cache
def _base_models() -> tuple[bytes, ...]:
    """Small float models built with onnx.helper: an MLP, a CNN and an element-wise graph."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(nodes, inputs, outputs, weights, name):
        initializers = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), n)
                        for n, shape in weights]
        graph = helper.make_graph(
            nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs], initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        return proto.SerializeToString()

    mlp = model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
                 helper.make_node("Relu", ["h"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)],
                [("x", ["N", 16])], [("y", ["N", 4])],
                [("w1", (8, 16)), ("b1", (8,)), ("w2", (4, 8)), ("b2", (4,))], "mlp")
    cnn = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
                 helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1)],
                [("x", [1, 1, 6, 6])], [("y", [1, 3])],
                [("w", (2, 1, 3, 3)), ("b", (2,)), ("w2", (3, 18)), ("b2", (3,))], "cnn")
    elementwise = model([helper.make_node("Add", ["x", "c"], ["s"], name="add"),
                         helper.make_node("Mul", ["s", "x"], ["m"], name="mul"),
                         helper.make_node("Softmax", ["m"], ["y"], name="softmax", axis=-1)],
                        [("x", [2, 5])], [("y", [2, 5])], [("c", (5,))], "elementwise")
    return mlp, cnn, elementwise


def _onnx_strategy():
    from hypothesis import strategies as st

    byte_edit = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]), st.integers(0, 1 << 16),
                          st.binary(min_size=1, max_size=4))
    field_edit = st.tuples(st.sampled_from(["op_type", "attribute", "dim", "input", "opset", "initializer",
                                            "output"]),
                           st.integers(0, 1 << 16), st.integers(-3, 70))
    return st.tuples(st.integers(0, len(_base_models()) - 1), st.lists(field_edit, max_size=3),
                     st.lists(byte_edit, max_size=3), st.booleans())


_OP_TYPES = ("Relu", "Conv", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool", "Softmax", "Flatten",
             "Reshape", "Transpose", "Concat", "LSTM", "Identity", "Sigmoid", "Bogus")


def _mutate_fields(data: bytes, edits) -> bytes:
    """Structured mutations of a serialized model: what a careless exporter or a hand edit produces."""
    import onnx

    proto = onnx.ModelProto.FromString(data)
    graph = proto.graph
    for kind, index, value in edits:
        node = graph.node[index % len(graph.node)]
        if kind == "op_type":
            node.op_type = _OP_TYPES[index % len(_OP_TYPES)]
        elif kind == "attribute" and node.attribute:
            attribute = node.attribute[index % len(node.attribute)]
            if attribute.ints:
                attribute.ints[index % len(attribute.ints)] = value
            else:
                attribute.i = value
        elif kind == "dim":
            values = [*graph.input, *graph.output]
            dims = values[index % len(values)].type.tensor_type.shape.dim
            if dims:
                dims[index % len(dims)].dim_value = value
        elif kind == "input" and node.input:
            node.input[index % len(node.input)] = ("", "x", "missing", node.output[0])[value % 4]
        elif kind == "opset":
            proto.opset_import[0].version = value
        elif kind == "initializer" and graph.initializer:
            tensor = graph.initializer[index % len(graph.initializer)]
            if tensor.dims:
                tensor.dims[index % len(tensor.dims)] = max(0, value)
        elif kind == "output":
            node.output[0] = ("", "y", "x", "renamed")[value % 4]
    return proto.SerializeToString()


def _mutate_bytes(data: bytes, edits) -> bytes:
    for kind, position, payload in edits:
        position %= len(data) + 1
        if kind == "flip" and data:
            position %= len(data)
            data = data[:position] + bytes([data[position] ^ payload[0]]) + data[position + 1:]
        elif kind == "truncate":
            data = data[:position]
        elif kind == "insert":
            data = data[:position] + payload + data[position:]
        else:
            data = data[:position] + data[position + len(payload):]
    return data


def _run_onnx(case) -> None:
    from braze.sw.compiler.frontend import load_onnx
    from braze.sw.compiler.passes import simplify
    from braze.sw.compiler.validate import validate

    index, field_edits, byte_edits, allow_fallback = case
    data = _mutate_bytes(_mutate_fields(_base_models()[index], field_edits), byte_edits)
    validate(simplify(load_onnx(data, allow_fallback=allow_fallback)))


#: Largest input (elements) the model target feeds a mutated model: bigger ones only compile.
_MODEL_RUN_ELEMENTS = 1 << 14


def _run_model(case) -> None:
    """A mutated model that loads, compiled (calibrated where its inputs are float) and run once."""
    from braze.sw.compiler.cache import KernelCache
    from braze.sw.compiler.frontend import load_onnx
    from braze.sw.runtime.session import InferenceSession

    index, field_edits, byte_edits, allow_fallback = case
    data = _mutate_bytes(_mutate_fields(_base_models()[index], field_edits), byte_edits)
    graph = load_onnx(data, allow_fallback=allow_fallback)
    rng = np.random.default_rng(0)
    feeds = {}
    for name in graph.inputs:
        info = graph.tensor(name)
        shape = tuple(d if isinstance(d, int) else 2 for d in (info.shape or ()))
        feeds[name] = rng.normal(size=shape).astype(info.dtype or "float32")
    small = all(value.size <= _MODEL_RUN_ELEMENTS for value in feeds.values())
    floats = all(value.dtype.kind == "f" for value in feeds.values())
    session = InferenceSession(data, config="tiny", allow_fallback=allow_fallback,
                               cache=KernelCache(disk=False), calibration=feeds if small and floats else None)
    if small:
        session.run(None, feeds)


# ---------------------------------------------------------------------------------------------------
# InferenceSession.run inputs
# ---------------------------------------------------------------------------------------------------

@functools.cache
def _sessions() -> dict[str, Any]:
    """Sessions of the MLP (symbolic batch) and the CNN on the tiny preset, golden device, both policies."""
    from braze.sw.compiler.cache import KernelCache
    from braze.sw.runtime.session import InferenceSession

    mlp, cnn, _ = _base_models()
    rng = np.random.default_rng(1)
    calibration = {"mlp": rng.normal(size=(4, 16)).astype(np.float32),
                   "cnn": rng.normal(size=(1, 1, 6, 6)).astype(np.float32)}
    return {f"{name}-{policy}": InferenceSession(model, config="tiny", calibration=calibration[name],
                                                 cache=KernelCache(disk=False), nonfinite=policy)
            for name, model in (("mlp", mlp), ("cnn", cnn)) for policy in ("error", "clamp")}


_SESSION_DTYPES = ("float32", "float64", "float16", "int8", "int64", "uint8", "bool", "complex64")


def _session_strategy():
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    def floats(dtype: np.dtype):
        info = np.finfo(dtype)
        special = st.sampled_from([0.0, np.nan, np.inf, -np.inf, float(info.max), float(info.min),
                                   float(info.tiny)])
        return st.one_of(st.floats(-4, 4, width=min(dtype.itemsize * 8, 64)), special).map(dtype.type)

    def array(dtype: np.dtype, shape):
        return hnp.arrays(dtype, shape, elements=floats(dtype) if dtype.kind == "f" else None)

    any_array = st.tuples(st.sampled_from(_SESSION_DTYPES).map(np.dtype),
                          hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)).flatmap(
        lambda spec: array(*spec))

    @st.composite
    def case(draw):
        name = draw(st.sampled_from(["mlp-error", "mlp-clamp", "cnn-error", "cnn-clamp"]))
        # Half the cases feed the right dtype and shape (the MLP's batch is symbolic), with NaN,
        # infinities and the float32 extremes among the values; the rest anything at all.
        shape = (draw(st.integers(1, 3)), 16) if name.startswith("mlp") else (1, 1, 6, 6)
        value = st.one_of(any_array, st.none(), st.integers(), st.lists(st.floats(), max_size=3),
                          st.text(max_size=3))
        feeds = draw(st.one_of(
            array(np.dtype(np.float32), shape).map(lambda x: {"x": x}),
            st.dictionaries(st.sampled_from(["x", "y", "X", ""]), value, max_size=2),
            st.none(), st.lists(any_array, max_size=1)))
        outputs = draw(st.one_of(st.none(), st.just(["y"]),
                                 st.lists(st.sampled_from(["y", "x", "bogus"]), max_size=2)))
        return name, feeds, outputs

    return case()


def _run_session(case) -> None:
    name, feeds, output_names = case
    session = _sessions()[name]
    results = session.run(output_names, feeds)
    for value in results:
        if not isinstance(value, np.ndarray):
            raise AssertionError(f"run returned a {type(value).__name__}, not an array")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise AssertionError(f"session {name}: run returned non-finite outputs")


TARGETS: dict[str, Target] = {target.name: target for target in (
    Target("asm", "assembler (source bytes, predefined constants)", _asm_strategy, _run_asm),
    Target("disasm", "disassembler (program bytes)", _disasm_strategy, _run_disasm),
    Target("config", "configuration parser (presets, overrides, JSON)", _config_strategy, _run_config),
    Target("onnx", "ONNX loader (mutated and truncated models)", _onnx_strategy, _run_onnx),
    Target("model", "mutated models that load, compiled and run", _onnx_strategy, _run_model),
    Target("session", "InferenceSession.run (inputs and output names)", _session_strategy, _run_session),
)}


# ---------------------------------------------------------------------------------------------------
# Running targets
# ---------------------------------------------------------------------------------------------------

def _settings(max_examples: int, **extra: Any):
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), **extra)


def property_test(name: str, *, max_examples: int = 50, timeout: float = 10.0) -> Callable[[], None]:
    """A hypothesis test of target ``name``: fails (with a shrunk example) on any crash or hang."""
    from hypothesis import given

    target = TARGETS[name]

    @_settings(max_examples, derandomize=True)
    @given(target.strategy())
    def test(case):
        outcome = check(target, case, timeout=timeout)
        assert outcome.kind in (OK, ERROR), f"{name}: {outcome.kind}: {outcome.detail}"

    return test


@dataclasses.dataclass
class TargetStats:
    """Counts of one target over a campaign, and the distinct crashes and hangs with a case of each."""

    name: str
    cases: int = 0
    ok: int = 0
    errors: int = 0
    crashes: int = 0
    hangs: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, outcome: Outcome, case: Any) -> None:
        self.cases += 1
        if outcome.kind == OK:
            self.ok += 1
        elif outcome.kind == ERROR:
            self.errors += 1
        else:
            self.crashes += outcome.kind == CRASH
            self.hangs += outcome.kind == HANG
            self.failures.setdefault(f"{outcome.kind}: {outcome.detail}", repr(case)[:300])


def run_campaign(names: Sequence[str], seconds: float, *, seed: int = 0, batch: int = 20,
                 timeout: float = 10.0, log: Callable[[str], None] | None = None) -> list[TargetStats]:
    """Run the targets round-robin, ``batch`` cases at a time, until ``seconds`` have passed."""
    from hypothesis import Phase, given
    from hypothesis import seed as hypothesis_seed

    stats = {name: TargetStats(name) for name in names}
    strategies = {name: TARGETS[name].strategy() for name in names}

    def batch_of(name: str, round_seed: int) -> Callable[[], None]:
        target, record = TARGETS[name], stats[name]

        @_settings(batch, phases=[Phase.generate])
        @hypothesis_seed(round_seed)
        @given(strategies[name])
        def one_batch(case):
            record.add(check(target, case, timeout=timeout), case)   # never fails: every case counts
        return one_batch

    began = last_log = time.monotonic()
    rounds = 0
    while time.monotonic() - began < seconds:
        for name in names:
            started = time.monotonic()
            batch_of(name, seed * 1_000_003 + rounds)()
            stats[name].seconds += time.monotonic() - started
            if time.monotonic() - began >= seconds:
                break
        rounds += 1
        if log is not None and time.monotonic() - last_log >= 30:
            last_log = time.monotonic()
            total = list(stats.values())
            log(f"{last_log - began:5.0f} s, round {rounds}: {sum(s.cases for s in total)} cases, "
                f"{sum(s.crashes for s in total)} crashes, {sum(s.hangs for s in total)} hangs")
    return list(stats.values())


def format_table(stats: Sequence[TargetStats]) -> str:
    lines = [f"{'target':<8} {'cases':>7} {'ok':>7} {'errors':>7} {'crashes':>8} {'hangs':>6} "
             f"{'cases/s':>8}  what"]
    for s in stats:
        rate = s.cases / s.seconds if s.seconds else 0.0
        lines.append(f"{s.name:<8} {s.cases:>7} {s.ok:>7} {s.errors:>7} {s.crashes:>8} {s.hangs:>6} "
                     f"{rate:>8.1f}  {TARGETS[s.name].what}")
    for s in stats:
        for failure, case in s.failures.items():
            lines.append(f"  {s.name}: {failure}\n    case: {case}")
    return "\n".join(lines)


def summary_line(stats: Sequence[TargetStats]) -> str:
    return (f"fuzz: cases={sum(s.cases for s in stats)} crashes={sum(s.crashes for s in stats)} "
            f"hangs={sum(s.hangs for s in stats)}")


def main(argv: Sequence[str] | None = None) -> int:
    """``braze bench fuzz [--minutes N] [--targets a,b] [--seed S] [--timeout SECONDS]``."""
    parser = ArgumentParser(prog="braze bench fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to fuzz (default: 1)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated targets (default: all of {','.join(TARGETS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default: 0)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds one case may take before it counts as a hang (default: 10)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        parser.error(f"--targets: unknown target(s) {unknown or names}; targets are {', '.join(TARGETS)}")
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        parser.error(f"--minutes {args.minutes} must be a positive number")
    if not (math.isfinite(args.timeout) and args.timeout > 0) or args.seed < 0:
        parser.error("--timeout must be positive and --seed at least 0")
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise BrazeError("braze bench fuzz needs hypothesis: pip install 'braze[dev]'") from None
    for name in names:      # build the inputs' corpora and sessions before the clock starts
        TARGETS[name].strategy()
        if name == "session":
            _sessions()
    stats = run_campaign(names, args.minutes * 60, seed=args.seed, timeout=args.timeout,
                         log=lambda line: print(line, flush=True))
    print()
    print(format_table(stats))
    print(summary_line(stats))
    return 0
