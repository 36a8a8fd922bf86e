"""``braze bench dispatch``: what control flow on the chip buys (issue 13), on the reference model.

1. **Program size**: GEMM 256^3 on ``default`` as the compiler emits it today (unrolled tiles),
   as the library emits it with ``loops=True`` (:mod:`braze.sw.compiler.kernels.loops`: the same
   tiling, its repeated runs rolled into loops) and as the looped kernel
   (:mod:`braze.sw.compiler.kernels.looped`): program bytes, and the instructions dispatched (the
   looped programs' loop bodies are dispatched once per iteration; the straight-line one's bytes
   are its instruction-fetch traffic).  Then, for several shapes, the library kernel's cycles
   straight-line and with loops (timing model).
2. **Zero-block skipping**: GEMM 64x256x64 and 64x256x256 on ``default`` whose A (the output of
   a ReLU) has a fraction of its K-blocks all zero (0, 25, 50, 75, 90%): cycles of the
   looped kernel without and with the on-chip test-and-skip, and of the compiler's best
   non-skipping kernel (the library's, with loops where no slower: its cycles do not depend on
   the data).  A block is m rows by the skipping kernel's block K (``block K``: 8, 16, 32 or 64,
   the one the timing model prices fastest at that fraction, as the fusion engine picks it at a
   profiled fraction), and the fraction is counted at that block size.  The summary's speedup is
   the narrower layer's.
3. **Batch-parametric**: batch sizes 1..64 of a 64-deep, 64-wide layer (``default``): today one
   compile per batch size; the looped kernel is compiled once and every batch size runs from it,
   its batch a scalar register the host writes; each run's result is checked against numpy.

4. **On the RTL** (``--rtl verilator``, the default): the narrower skipping layer at 0..90%
   zero blocks on the Verilator device, without and with skipping, and the compiler's best
   non-skipping kernel for it -- measured cycles, C checked against numpy and the exact counters
   against the golden device's; the library's kernels straight-line and with loops for
   several shapes (outputs compared, cycles measured) -- and ``--rtl-programs``
   random control-flow programs (:func:`braze.sim.progen.generate_control_flow`, ``braze verify
   --control-flow``) on ``tiny``.  ``mismatches`` counts the random programs that differ from the
   reference model plus the looped kernel runs that do; ``--rtl none`` leaves it ``n/a``.

5. **A whole model**: a sparse ReLU MLP (``relu(x @ W1 + b1) @ W2``, x 64 x 64, 256 hidden units of
   which half the blocks of ``rows`` never fire, 64 outputs) quantized with zero point 0 and
   compiled twice, the fusion engine given the calibration profile (the skipping candidate
   offered, priced at the profiled zero-block fraction) and not; both run on the golden device
   (and on the Verilator device with ``--rtl verilator``), outputs checked against the
   evaluator; ``model_speedup`` is the whole model's cycles without the candidate over with it.

Cycles in 1-3 are the timing model's (the golden device's); every run's C is checked against
numpy.  Ends with one line ``dispatch: skip_speedup_at_50=<x> program_shrink=<x>
compiles_for_64_batch_sizes=<n> mismatches=<n> skip_ratio_at_0=<x> ...``: the skipping figures
(plain / skipping cycles of the narrower layer at 50% and 0% zero blocks) are those measured on
the Verilator device when section 4 ran, followed by the timing model's for the same layer
(``skip_speedup_at_50_model``, ``skip_ratio_at_0_model``), and ``skip_measured_on`` says which.
``model_speedup`` (section 5; on the RTL when it ran, with ``model_speedup_model``) follows.
``skip_vs_best_at_0`` and ``skip_vs_best_at_50`` divide the compiler's best non-skipping kernel's
cycles by the skipping kernel's (the same device); ``loops_shrink`` is the library's own
256^3 kernel's program bytes straight-line over looped, and ``loops_cycle_ratio`` the largest
looped / straight-line cycle ratio over the shapes of section 4 (of section 1 on the model).
``golden_looped_first_ms`` and ``golden_looped_warm_ms`` are the reference model's wall time for the
looped GEMM of section 1: its first run (which plans the program, loops followed) and each later run.

6. **The compiler's default**: the digits CNN and MLP (:mod:`braze.sw.compiler.models`, batch 64;
   ``--quick``: one epoch, batch 8) on ``tiny`` and ``default`` (:data:`DIGITS_CONFIGS`) compiled
   with every kernel straight-line (``loops=False``) and
   with the lowering's default loops (:func:`~braze.sw.compiler.lower.lower`), planned by the timing
   model: the programs' bytes, and the cycles on the golden device (and the Verilator device with
   ``--rtl verilator``), every run's outputs compared bit for bit with the golden straight-line
   run's (counted in ``mismatches``).
   ``model_program_shrink`` is all their program bytes straight-line over with loops, and
   ``model_loops_cycle_ratio`` the largest with-loops / straight-line cycle ratio (on the Verilator
   device when it ran).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from braze.isa import Config, encode_program
from braze.isa.encoding import Opcode
from braze.isa.errors import ArgumentParser
from braze.isa.model import Machine, RunResult

from ..compiler.kernels import gemm, run_kernel
from ..compiler.kernels.looped import LoopedGemm, best_skipping_chunks, looped_gemm
from ..compiler.kernels.loops import expand_loops, loops_if_no_slower

__all__ = ["main", "run_looped", "block_sparse"]

SPARSITIES = (0.0, 0.25, 0.5, 0.75, 0.9)


def block_sparse(rng: np.random.Generator, M: int, K: int, m: int, rows: int, sparsity: float) -> np.ndarray:
    """Random int8 M x K activations, after a ReLU (non-negative), with ``round(sparsity * K/rows)`` of
    the ``m x rows`` blocks of every M tile all zero (and the others not)."""
    a = rng.integers(1, 128, (M, K), dtype=np.int8)
    blocks = K // rows
    for first in range(0, M, m):
        for block in rng.choice(blocks, round(sparsity * blocks), replace=False):
            a[first:first + m, block * rows:(block + 1) * rows] = 0
    return a


def run_looped(kernel: LoopedGemm, a: np.ndarray, b: np.ndarray, machine: Machine | None = None
               ) -> tuple[RunResult, np.ndarray]:
    """Run ``kernel`` on the reference model for the rows of ``a``; returns the run and C (rows of ``a``)."""
    M = a.shape[0]
    machine = machine or Machine(kernel.config)
    padded = np.zeros((kernel.padded_m, kernel.K), dtype=np.int8)
    padded[:M] = a
    machine.write_dram(kernel.a, padded)
    machine.write_dram(kernel.b, np.ascontiguousarray(b, dtype=np.int8))
    for register, value in kernel.registers(M).items():
        machine.write_scalar(register, value)
    result = machine.run_program(list(kernel.program))
    c = np.frombuffer(machine.read_dram(kernel.c, 4 * M * kernel.N), "<i4").reshape(M, kernel.N)
    return result, c


def run_looped_on(device, kernel: LoopedGemm, a: np.ndarray, b: np.ndarray, *, base: int = 0):
    """Run ``kernel`` on a :class:`braze.sim.device.Device` (the program at ``base``, as it was built)
    for the rows of ``a``; returns the device's status and C."""
    M = a.shape[0]
    padded = np.zeros((kernel.padded_m, kernel.K), dtype=np.int8)
    padded[:M] = a
    device.write(kernel.a, padded.tobytes())
    device.write(kernel.b, np.ascontiguousarray(b, dtype=np.int8).tobytes())
    for register, value in kernel.registers(M).items():
        device.write_scalar(register, value)
    status = device.run(list(kernel.program), base=base)
    c = np.frombuffer(device.read(kernel.c, 4 * M * kernel.N), "<i4").reshape(M, kernel.N)
    return status, c


def _check(c: np.ndarray, a: np.ndarray, b: np.ndarray, what: str) -> None:
    expected = a.astype(np.int64) @ b.astype(np.int64)
    if not np.array_equal(c, expected):
        raise AssertionError(f"{what}: the looped kernel's C differs from numpy's")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, headers))] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(value.rjust(width) for value, width in zip(row, widths, strict=True))
                     for row in cells)


def program_size(config: Config, size: int) -> dict[str, float]:
    kernel = gemm(config, size, size, size, out="int32")
    unrolled = kernel.program()
    library = loops_if_no_slower(kernel)
    looped = looped_gemm(config, size, size, size)
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (size, size), dtype=np.int8)
    b = rng.integers(-128, 128, (size, size), dtype=np.int8)
    # The reference model's wall time: the first run walks the program (plans its loops), the next
    # ones replay the plan.
    machine = Machine(config)
    began = time.perf_counter()
    result, c = run_looped(looped, a, b, machine)
    first_seconds = time.perf_counter() - began
    _check(c, a, b, f"GEMM {size}^3")
    began = time.perf_counter()
    runs = 3
    for _ in range(runs):
        run_looped(looped, a, b, machine)
    warm_seconds = (time.perf_counter() - began) / runs
    return {"golden_first_ms": 1e3 * first_seconds, "golden_warm_ms": 1e3 * warm_seconds,
            "unrolled_bytes": len(encode_program(unrolled)),
            "library_bytes": len(encode_program(library.program())),
            "looped_bytes": len(encode_program(list(looped.program))),
            "unrolled_dispatched": len(unrolled),
            "library_dispatched": sum(1 for _ in expand_loops(library.program())),
            "looped_dispatched": result.instructions,
            "unrolled_cycles": kernel.predicted_cycles, "library_cycles": library.predicted_cycles,
            "looped_cycles": result.cycles}


def library_gemm(config: Config, M: int, K: int, N: int):
    """The compiler's best non-skipping GEMM (int32 out): the library's tiling, with loops where the
    timing model predicts them no slower; and the straight-line kernel."""
    kernel = gemm(config, M, K, N, out="int32")
    return loops_if_no_slower(kernel), kernel


def loop_cycles(config: Config, shapes: Sequence[tuple[int, int, int]]) -> list[tuple]:
    """Per shape: instructions and predicted cycles of the library's kernel straight-line and looped."""
    rows = []
    for M, K, N in shapes:
        looped, kernel = library_gemm(config, M, K, N)
        rows.append((f"{M}x{K}x{N}", len(kernel.instructions), len(looped.instructions),
                     kernel.predicted_cycles, looped.predicted_cycles))
    return rows


def skipping_kernel(config: Config, M: int, K: int, N: int, sparsity: float) -> LoopedGemm:
    """The skipping looped GEMM (int32 out) whose block size (K-chunks of ``rows``) the timing model
    prices fastest when ``sparsity`` of its blocks are all zero (the A of :func:`block_sparse` at
    that block size, as a profile at the kernel's block size would say)."""
    chunks, _ = best_skipping_chunks(config, M, K, N, lambda chunks: sparsity, out="int32")
    return looped_gemm(config, M, K, N, skip_zero_blocks=True, chunks=chunks)


def block_columns(kernel: LoopedGemm) -> int:
    """The K columns of one tested block of ``kernel``: the K of one MATMUL of its program."""
    return next(insn.args["k"] for insn in kernel.program if insn.opcode is Opcode.MATMUL)


def skipping(config: Config, M: int, K: int, N: int, sparsities: Sequence[float]) -> list[dict[str, float]]:
    rng = np.random.default_rng(1)
    plain = looped_gemm(config, M, K, N)
    unrolled_cycles = library_gemm(config, M, K, N)[0].predicted_cycles
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    rows = []
    for sparsity in sparsities:
        skip = skipping_kernel(config, M, K, N, sparsity)
        a = block_sparse(rng, M, K, skip.m, block_columns(skip), sparsity)
        plain_run, c = run_looped(plain, a, b)
        _check(c, a, b, f"sparsity {sparsity}")
        skip_run, c = run_looped(skip, a, b)
        _check(c, a, b, f"sparsity {sparsity}, skipping")
        rows.append({"sparsity": sparsity, "unrolled": unrolled_cycles, "looped": plain_run.cycles,
                     "looped_skip": skip_run.cycles, "block": block_columns(skip)})
    return rows


def batch_parametric(config: Config, max_batch: int, K: int, N: int) -> dict[str, float]:
    rng = np.random.default_rng(2)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    began = time.perf_counter()
    for batch in range(1, max_batch + 1):
        gemm(config, batch, K, N, out="int32")
    per_batch_seconds = time.perf_counter() - began
    began = time.perf_counter()
    kernel = looped_gemm(config, max_batch, K, N, m=config.rows)
    once_seconds = time.perf_counter() - began
    machine = Machine(config)
    for batch in range(1, max_batch + 1):
        a = rng.integers(-128, 128, (batch, K), dtype=np.int8)
        _, c = run_looped(kernel, a, b, machine)
        _check(c, a, b, f"batch {batch}")
    return {"compiles_today": max_batch, "seconds_today": per_batch_seconds, "compiles_looped": 1,
            "seconds_looped": once_seconds, "batches_checked": max_batch}


def _run_library(golden, device, kernel, a: np.ndarray, b: np.ndarray, exact: Sequence[str]
                 ) -> tuple[int, int, bool]:
    """Run a library GEMM (int32 out) on both devices: (golden cycles, device cycles, agree)."""
    inputs = {"A": a, "B": b}
    want = run_kernel(golden, kernel, inputs)
    have = run_kernel(device, kernel, inputs)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    same = np.array_equal(have.outputs["out"], expected) and np.array_equal(want.outputs["out"], expected) \
        and all(want.counters[name] == have.counters[name] for name in exact)
    return want.cycles, have.cycles, same


def on_rtl(config: Config, M: int, K: int, N: int, programs: int,
           loop_shapes: Sequence[tuple[int, int, int]] = ()) -> dict[str, object]:
    """Section 4: the looped kernel on the Verilator device at :data:`SPARSITIES` zero blocks (and the
    compiler's best non-skipping kernel), the library's kernels straight-line and looped for
    ``loop_shapes``, and random control-flow programs on ``tiny``; returns the table rows and the
    mismatch count."""
    from braze.isa import COUNTERS
    from braze.sim import verify
    from braze.sim.device import open_device

    exact = [spec.name for spec in COUNTERS if spec.exact]
    rng = np.random.default_rng(3)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    rows, kernel_mismatches, ratios, best_ratios, loop_rows = [], 0, {}, {}, []
    best = library_gemm(config, M, K, N)[0]
    with open_device("golden", config) as golden, open_device("verilator", config) as device:
        for sparsity in SPARSITIES:
            skipping_looped = skipping_kernel(config, M, K, N, sparsity)
            a = block_sparse(rng, M, K, skipping_looped.m, block_columns(skipping_looped), sparsity)
            cycles = {}
            for skip in (False, True):
                kernel = skipping_looped if skip else looped_gemm(config, M, K, N)
                want, _ = run_looped_on(golden, kernel, a, b)
                have, c = run_looped_on(device, kernel, a, b)
                expected = a.astype(np.int64) @ b.astype(np.int64)
                same = np.array_equal(c, expected) and all(want.counters[name] == have.counters[name]
                                                           for name in exact)
                kernel_mismatches += not same
                cycles[skip] = (want.cycles, have.cycles)
            best_golden, best_device, same = _run_library(golden, device, best, a, b, exact)
            kernel_mismatches += not same
            rows.append((f"{sparsity:.0%}", block_columns(skipping_looped), cycles[False][1], cycles[True][1],
                         f"{cycles[False][1] / cycles[True][1]:.2f}x", best_device,
                         f"{best_device / cycles[True][1]:.2f}x", cycles[False][0], cycles[True][0],
                         best_golden))
            # Plain / skipping cycles at this sparsity: measured on the RTL, and the timing model's.
            ratios[sparsity] = (cycles[False][1] / cycles[True][1], cycles[False][0] / cycles[True][0])
            best_ratios[sparsity] = (best_device / cycles[True][1], best_golden / cycles[True][0])
        for lM, lK, lN in loop_shapes:
            looped, kernel = library_gemm(config, lM, lK, lN)
            a = rng.integers(-128, 128, (lM, lK), dtype=np.int8)
            lb = rng.integers(-128, 128, (lK, lN), dtype=np.int8)
            plain = _run_library(golden, device, kernel, a, lb, exact)
            rolled = _run_library(golden, device, looped, a, lb, exact)
            kernel_mismatches += (not plain[2]) + (not rolled[2])
            loop_rows.append((f"{lM}x{lK}x{lN}", len(kernel.instructions), len(looped.instructions),
                              plain[1], rolled[1], f"{rolled[1] / plain[1]:.4f}", plain[0], rolled[0]))
    report = verify.verify(lambda c: open_device("verilator", c), Config.parse("tiny"), programs=programs,
                           seed=0, control_flow=True, minimise_trials=0) if programs else None
    return {"rows": rows, "kernel_mismatches": kernel_mismatches, "report": report, "ratios": ratios,
            "best_ratios": best_ratios, "loop_rows": loop_rows,
            "kernel_runs": 3 * len(SPARSITIES) + 2 * len(loop_shapes)}


def sparse_mlp(rows: int, features: int, hidden: int, outputs: int, block: int, seed: int = 0):
    """``relu(x @ w1 + b1) @ w2`` (float ONNX) with half the blocks of ``block`` hidden units dead (a
    negative bias: they never fire), so whole K-blocks of the second product's input are zero."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(features, hidden)) * 0.1).astype(np.float32)
    b1 = np.full(hidden, 0.5, np.float32)
    for first in rng.choice(hidden // block, hidden // block // 2, replace=False) * block:
        w1[:, first:first + block] = -np.abs(w1[:, first:first + block])
        b1[first:first + block] = -5.0
    w2 = (rng.normal(size=(hidden, outputs)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "sparse_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, outputs])],
                              [numpy_helper.from_array(value, name)
                               for name, value in (("w1", w1), ("b1", b1), ("w2", w2))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def whole_model(config: Config, devices: Sequence[str], rows: int = 64, features: int = 64, hidden: int = 256,
                outputs: int = 64) -> dict[str, object]:
    """Section 5: the sparse MLP compiled without and with the skipping candidate, run on ``devices``."""
    from braze.sim.device import open_device

    from ..compiler.cache import KernelCache
    from ..compiler.cost import TimingCostModel
    from ..compiler.frontend import evaluate, load_onnx
    from ..compiler.fusion import fuse
    from ..compiler.lower import lower
    from ..compiler.passes import simplify
    from ..compiler.profile import profile_graph
    from ..compiler.quantize import quantize
    from ..compiler.tiling import choose_tilings
    from .runtime import Runtime

    rng = np.random.default_rng(4)
    calibration = [{"x": np.abs(rng.normal(size=(rows, features))).astype(np.float32)} for _ in range(2)]
    feeds = {"x": np.abs(rng.normal(size=(rows, features))).astype(np.float32)}
    model = sparse_mlp(rows, features, hidden, outputs, config.rows)
    graph = quantize(simplify(load_onnx(model)), calibration, symmetric_activations=True)
    expected = evaluate(graph, feeds)["y"]
    profiles = profile_graph(graph, calibration)
    cost_model, cache = TimingCostModel(), KernelCache(disk=False)
    compiled, gains = {}, {}
    for skipping in (False, True):
        fused, decisions = fuse(graph, config, cost_model=cost_model, cache=cache,
                                profiles=profiles if skipping else None)
        fused, _ = choose_tilings(fused, config, cost_model=cost_model, cache=cache)
        compiled[skipping] = lower(fused, config, cache=cache)
        gains[skipping] = [d for d in decisions if d.opportunity.kind == "skip"]
    cycles, mismatches = {}, 0
    for name in devices:
        with open_device(name, config) as device:
            for skipping in (False, True):
                runtime = Runtime(compiled[skipping], device)
                mismatches += not np.array_equal(runtime.run(feeds)["y"], expected)
                cycles[name, skipping] = runtime.last_report.total_cycles
    return {"cycles": cycles, "decisions": gains[True], "mismatches": mismatches}


def digits_models(config: Config, devices: Sequence[str], batch: int, epochs: int | None = None
                  ) -> dict[str, dict]:
    """Section 6: the digits CNN and MLP compiled with every kernel straight-line (``loops=False``)
    and with the lowering's default loops, planned by the timing model (one plan for every device),
    run on ``devices``: program bytes (every segment's binary), cycles, and how many runs' outputs
    differ from the first device's straight-line ones."""
    from braze.sim.device import open_device

    from ..compiler import models
    from ..compiler.cache import KernelCache
    from .session import InferenceSession

    data = models.load_digits_split()
    cache = KernelCache(disk=False)
    results: dict[str, dict] = {}
    for kind, train in (("cnn", models.train_cnn), ("mlp", models.train_mlp)):
        model, _ = train(data, seed=0, **({"epochs": epochs} if epochs else {}))
        onnx_model = model.to_onnx()
        calibration = models.calibration_set(model, data, seed=0)
        x = model.inputs(data.x_val[:batch])
        row: dict = {"bytes": {}, "cycles": {}, "mismatches": 0}
        outputs = {}
        for name in devices:
            with open_device(name, config) as device:
                for loops in (False, True):
                    session = InferenceSession(onnx_model, device=device, config=config,
                                               calibration=calibration, cost_model="analytic", cache=cache,
                                               record=False, loops=loops)
                    outputs[name, loops] = session.run(None, {session.get_inputs()[0].name: x})[0]
                    row["bytes"][loops] = sum(len(segment.binary) for segment in session.compiled.segments)
                    row["cycles"][name, loops] = session.report().total_cycles
        # Every run's outputs are the first device's straight-line ones, bit for bit.
        reference = outputs[devices[0], False]
        row["mismatches"] = sum(not np.array_equal(value, reference) for value in outputs.values())
        results[kind] = row
    return results


#: The configurations section 6 compiles the digits models for (on ``tiny`` the CNN's max-pool and
#: activations roll: 1.77x fewer program bytes at batch 64; on ``default`` the timing model keeps
#: every kernel straight-line: the CNN's max-pool is fetch-bound once rolled).
DIGITS_CONFIGS = ("tiny", "default")
#: Shapes whose library kernel is compared straight-line and looped (M, K, N on default).
LOOP_SHAPES = ((64, 256, 64), (128, 512, 128), (256, 256, 256), (100, 200, 56))
QUICK_LOOP_SHAPES = ((16, 32, 16),)


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="braze bench dispatch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller shapes (GEMM 128^3, 32x64x32, batches 1..8; on the RTL 16x32x16 on "
                             "tiny and 10 random programs): for the tests")
    parser.add_argument("--rtl", choices=("verilator", "none"), default="verilator",
                        help="measure on the Verilator device too (section 4; default) or not")
    parser.add_argument("--rtl-programs", type=int, default=None, metavar="N",
                        help="random control-flow programs verified on the RTL (default 500, quick 10)")
    args = parser.parse_args(argv)
    config = Config.parse("default")
    # Quick: 128^3, not 64^3: on the overlapped default a 64^3 GEMM's first and last tiles are cut
    # differently, so its library kernel has almost nothing that repeats (1,120 of 1,152 bytes rolled).
    size, (M, K, N), batches = (128, (32, 64, 32), 8) if args.quick else (256, (64, 256, 64), 64)

    sizes = program_size(config, size)
    print(f"== GEMM {size}^3 on {config.name}: program size ==")
    print(_table(("kernel", "program bytes", "instructions dispatched", "cycles (model)"),
                 [("unrolled (compiler today)", sizes["unrolled_bytes"], sizes["unrolled_dispatched"],
                   sizes["unrolled_cycles"]),
                  ("library, loops=True", sizes["library_bytes"], sizes["library_dispatched"],
                   sizes["library_cycles"]),
                  ("looped", sizes["looped_bytes"], sizes["looped_dispatched"], sizes["looped_cycles"])]))
    print(f"reference model (golden) wall time of the looped kernel: first run "
          f"{sizes['golden_first_ms']:.0f} ms, then {sizes['golden_warm_ms']:.1f} ms per run "
          f"(its plan replayed)")
    shrink = sizes["unrolled_bytes"] / sizes["looped_bytes"]
    loops_shrink = sizes["unrolled_bytes"] / sizes["library_bytes"]
    loop_shapes = QUICK_LOOP_SHAPES if args.quick else LOOP_SHAPES
    print(f"\n== library GEMMs on {config.name}: straight-line and with loops (timing model) ==")
    model_rows = loop_cycles(config, loop_shapes)
    print(_table(("shape", "instructions", "with loops", "cycles", "with loops"), model_rows))
    loops_ratio = max(row[4] / row[3] for row in model_rows)

    at_50, at_0, best_50, best_0 = {}, {}, {}, {}
    for width in (N, 4 * N):
        print(f"\n== GEMM {M}x{K}x{width} on {config.name}: cycles vs zero K-blocks of A ==")
        sweep = skipping(config, M, K, width, SPARSITIES)
        print(_table(("zero blocks", "block K", "compiler's best", "looped", "looped + skip",
                      "skip speedup vs looped", "vs compiler's best"),
                     [(f"{row['sparsity']:.0%}", row["block"], row["unrolled"], row["looped"],
                       row["looped_skip"],
                       f"{row['looped'] / row['looped_skip']:.2f}x",
                       f"{row['unrolled'] / row['looped_skip']:.2f}x")
                      for row in sweep]))
        row = next(row for row in sweep if row["sparsity"] == 0.5)
        at_50[width] = row["looped"] / row["looped_skip"]
        best_50[width] = row["unrolled"] / row["looped_skip"]
        row = next(row for row in sweep if row["sparsity"] == 0.0)
        at_0[width] = row["looped"] / row["looped_skip"]
        best_0[width] = row["unrolled"] / row["looped_skip"]

    batch = batch_parametric(config, batches, K, N)
    print(f"\n== batch sizes 1..{batches}, {K}x{N} layer on {config.name} ==")
    print(_table(("kernel", "compiles", "compile seconds", "batches run and checked"),
                 [("per batch size (today)", batch["compiles_today"], f"{batch['seconds_today']:.2f}", "-"),
                  ("batch-parametric looped", batch["compiles_looped"], f"{batch['seconds_looped']:.4f}",
                   batch["batches_checked"])]))
    mismatches = "n/a"
    # The summary reports the narrower layer, where a skipped block saves less: measured on the RTL
    # when it ran (with the timing model's figure for the same layer), else the timing model's.
    skip = {"skip_speedup_at_50": at_50[N], "skip_ratio_at_0": at_0[N]}
    best = {"skip_vs_best_at_0": best_0[N], "skip_vs_best_at_50": best_50[N]}
    measured_on = "model"
    if args.rtl == "verilator":
        programs = args.rtl_programs if args.rtl_programs is not None else (10 if args.quick else 500)
        rtl_config, (rM, rK, rN) = (Config.parse("tiny"), (16, 32, 16)) if args.quick else (config, (M, K, N))
        rtl = on_rtl(rtl_config, rM, rK, rN, programs, loop_shapes)
        print(f"\n== on the Verilator device: GEMM {rM}x{rK}x{rN} on {rtl_config.name}, cycles measured ==")
        print(_table(("zero blocks", "block K", "looped", "looped + skip", "skip speedup", "compiler's best",
                      "skip vs best", "golden looped", "golden looped + skip", "golden best"), rtl["rows"]))
        print(f"\n== on the Verilator device: library GEMMs on {rtl_config.name}, straight-line and with "
              f"loops ==")
        print(_table(("shape", "instructions", "with loops", "cycles", "with loops", "ratio", "golden",
                      "golden with loops"), rtl["loop_rows"]))
        loops_ratio = max(float(row[5]) for row in rtl["loop_rows"])
        report = rtl["report"]
        mismatches = rtl["kernel_mismatches"] + (report.mismatches if report else 0)
        print(f"kernel runs differing from golden or numpy (C or exact counters): "
              f"{rtl['kernel_mismatches']} of {rtl['kernel_runs']}")
        if report:
            print(f"random control-flow programs on tiny: {report.programs}, mismatching: "
                  f"{report.mismatches} ({report.wall_seconds:.0f} s)")
        measured_on = "verilator"
        skip = {"skip_speedup_at_50": rtl["ratios"][0.5][0], "skip_ratio_at_0": rtl["ratios"][0.0][0],
                "skip_speedup_at_50_model": rtl["ratios"][0.5][1],
                "skip_ratio_at_0_model": rtl["ratios"][0.0][1]}
        best = {"skip_vs_best_at_0": rtl["best_ratios"][0.0][0],
                "skip_vs_best_at_50": rtl["best_ratios"][0.5][0]}
    devices = ["golden"] + (["verilator"] if args.rtl == "verilator" else [])
    model = whole_model(config, devices, *((32, 32, 64, 32) if args.quick else (64, 64, 256, 64)))
    print(f"\n== a sparse ReLU MLP on {config.name}: without and with the skipping candidate ==")
    for decision in model["decisions"]:
        print(f"fusion: {decision}")
    speedups = {name: model["cycles"][name, False] / model["cycles"][name, True] for name in devices}
    print(_table(("device", "cycles without", "cycles with", "speedup"),
                 [(name, model["cycles"][name, False], model["cycles"][name, True], f"{speedups[name]:.2f}x")
                  for name in devices]))
    if mismatches != "n/a":
        mismatches += model["mismatches"]
    measured = devices[-1]
    model_speedup = {"model_speedup": speedups[measured]}
    if measured != "golden":
        model_speedup["model_speedup_model"] = speedups["golden"]
    digits = {(preset, kind): row for preset in DIGITS_CONFIGS
              for kind, row in digits_models(Config.parse(preset), devices,
                                             *((8, 1) if args.quick else (64, None))).items()}
    print("\n== the digits models: kernels straight-line and with the default loops ==")
    print(_table(("config", "model", "program bytes", "with loops", "shrink",
                  *(f"{name} {what}" for name in devices for what in ("cycles", "with loops", "ratio"))),
                 [(preset, kind, row["bytes"][False], row["bytes"][True],
                   f"{row['bytes'][False] / row['bytes'][True]:.3f}x",
                   *(value for name in devices for value in (
                       row["cycles"][name, False], row["cycles"][name, True],
                       f"{row['cycles'][name, True] / row['cycles'][name, False]:.4f}")))
                  for (preset, kind), row in digits.items()]))
    model_shrink = sum(row["bytes"][False] for row in digits.values()) / sum(row["bytes"][True]
                                                                             for row in digits.values())
    model_loops_ratio = max(row["cycles"][measured, True] / row["cycles"][measured, False]
                            for row in digits.values())
    if mismatches != "n/a":
        mismatches += sum(row["mismatches"] for row in digits.values())
    print(f"dispatch: skip_speedup_at_50={skip['skip_speedup_at_50']:.2f} "
          f"program_shrink={shrink:.1f} compiles_for_{batches}_batch_sizes={batch['compiles_looped']} "
          f"mismatches={mismatches} skip_ratio_at_0={skip['skip_ratio_at_0']:.2f} "
          + "".join(f"{key}={value:.2f} " for key, value in skip.items() if key.endswith("_model"))
          + f"skip_measured_on={measured_on} "
          + "".join(f"{key}={value:.2f} " for key, value in best.items())
          + f"loops_shrink={loops_shrink:.1f} loops_cycle_ratio={loops_ratio:.4f} "
          + " ".join(f"{key}={value:.2f}" for key, value in model_speedup.items())
          + f" golden_looped_first_ms={sizes['golden_first_ms']:.0f} "
          f"golden_looped_warm_ms={sizes['golden_warm_ms']:.1f} "
          f"model_program_shrink={model_shrink:.3f} model_loops_cycle_ratio={model_loops_ratio:.4f}")
    return 0

