"""The looped GEMM kernel (control flow, issue 13) on the reference model, and ``braze bench dispatch``."""

import math
import re

import numpy as np
import pytest

from braze.isa import PRESETS, Config
from braze.isa.model import Machine
from braze.sw.compiler.kernels.common import KernelError
from braze.sw.compiler.kernels.looped import looped_gemm
from braze.sw.runtime import dispatch_bench
from braze.sw.runtime.dispatch_bench import block_sparse, run_looped

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("M, K, N, m, chunks", [(1, 4, 4, 4, 1), (6, 8, 12, 4, 1), (9, 12, 8, 4, 1),
                                                (16, 16, 4, 16, 1), (3, 8, 8, None, 1),
                                                (8, 16, 8, 8, 2), (9, 32, 4, 16, 4), (16, 16, 8, None, 4)])
@pytest.mark.parametrize("skip", [False, True])
def test_looped_gemm_is_exact(M, K, N, m, chunks, skip):
    # chunks > 1: a tested block (one MATMUL) spans several K-chunks of rows.
    rng = np.random.default_rng(M * 100 + K + N + skip)
    kernel = looped_gemm(TINY, M, K, N, m=m, skip_zero_blocks=skip, chunks=chunks)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    _, c = run_looped(kernel, a, b)
    assert np.array_equal(c, a.astype(np.int64) @ b)


def test_skipping_skips_exactly_the_zero_blocks():
    rng = np.random.default_rng(7)
    M, K, N, m = 8, 16, 8, 4
    a = block_sparse(rng, M, K, m, TINY.rows, 0.5)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    a[:m, :TINY.rows] = 0                       # a first block of an M tile: computed untested
    zero = [(i, j) for i in range(0, M, m) for j in range(0, K, TINY.rows)
            if not a[i:i + m, j:j + TINY.rows].any()]
    assert len(zero) >= 4                       # half of the 2 x 4 blocks, and that one
    zero_blocks = sum(j > 0 for _, j in zero)   # the skipped ones
    assert 0 < zero_blocks < len(zero)
    plain, c_plain = run_looped(looped_gemm(TINY, M, K, N, m=m), a, b)
    skip, c_skip = run_looped(looped_gemm(TINY, M, K, N, m=m, skip_zero_blocks=True), a, b)
    assert np.array_equal(c_plain, c_skip) and np.array_equal(c_skip, a.astype(np.int64) @ b)
    n_tiles, blocks = N // TINY.cols, (M // m) * (K // TINY.rows)
    assert plain.counters["macs"] == M * N * K
    assert skip.counters["macs"] == (blocks - zero_blocks) * n_tiles * m * TINY.cols * TINY.rows
    assert skip.counters["insn_matmul"] == (blocks - zero_blocks) * n_tiles


def test_one_batch_parametric_program_serves_every_batch_size():
    kernel = looped_gemm(TINY, 10, 8, 8, m=TINY.rows)
    program = kernel.program
    machine = Machine(TINY)
    rng = np.random.default_rng(3)
    b = rng.integers(-128, 128, (8, 8), dtype=np.int8)
    for batch in (1, 3, 4, 5, 10):
        a = rng.integers(-128, 128, (batch, 8), dtype=np.int8)
        result, c = run_looped(kernel, a, b, machine)
        assert np.array_equal(c, a.astype(np.int64) @ b)
        assert result.counters["insn_store"] == -(-batch // TINY.rows) * (8 // TINY.cols)
    assert kernel.program is program


def test_looped_gemm_is_far_smaller_than_its_dispatched_instructions():
    kernel = looped_gemm(Config.parse("default"), 256, 256, 256)
    assert len(kernel.program) < 32
    assert kernel.registers() == {7: 256 * 256}


@pytest.mark.parametrize("args, message", [
    ((TINY, 4, 6, 4), "K=6 must be a multiple of rows=4"),
    ((TINY, 4, 4, 5), "N=5"),
    ((TINY, 0, 4, 4), "max_m=0"),
])
def test_bad_shapes_are_named(args, message):
    with pytest.raises(KernelError, match=re.escape(message)):
        looped_gemm(*args)


def test_batch_outside_the_built_range_is_an_error():
    with pytest.raises(KernelError, match="M=11 is outside 1..10"):
        looped_gemm(TINY, 10, 4, 4).registers(11)


def test_bench_dispatch_quick_ends_with_its_summary(capsys):
    assert dispatch_bench.main(["--quick", "--rtl-programs", "3"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"dispatch: skip_speedup_at_50=([\d.]+) program_shrink=([\d.]+) "
                         r"compiles_for_8_batch_sizes=1 mismatches=0 skip_ratio_at_0=([\d.]+) "
                         r"skip_speedup_at_50_model=([\d.]+) skip_ratio_at_0_model=([\d.]+) "
                         r"skip_measured_on=verilator skip_vs_best_at_0=([\d.]+) skip_vs_best_at_50=([\d.]+) "
                         r"loops_shrink=([\d.]+) loops_cycle_ratio=([\d.]+) model_speedup=([\d.]+) "
                         r"model_speedup_model=([\d.]+) golden_looped_first_ms=([\d.]+) "
                         r"golden_looped_warm_ms=([\d.]+) model_program_shrink=([\d.]+) "
                         r"model_loops_cycle_ratio=([\d.]+)", last)
    assert match, last
    assert float(match[1]) > 0 and float(match[2]) > 1 and float(match[8]) > 1
    assert float(match[12]) > 0 and float(match[13]) > 0          # the reference model's wall times
    # The summary's RTL figures are the section-4 table's (its 50% and 0% rows' speedup columns).
    table = {line.split()[0]: line.split() for line in out.splitlines()
             if line.strip().startswith(("0%", "50%"))}
    # (columns: zero blocks, block K, looped, looped + skip, skip speedup, compiler's best, skip vs best)
    assert table["50%"][4] == f"{float(match[1]):.2f}x" and table["0%"][4] == f"{float(match[3]):.2f}x"
    assert table["0%"][6] == f"{float(match[6]):.2f}x" and table["50%"][6] == f"{float(match[7]):.2f}x"
    assert "kernel runs differing from golden or numpy (C or exact counters): 0 of 17" in out
    # The whole sparse MLP: the skipping candidate was offered and priced.  This quick model's 32 x 64
    # product saves about what its taken branches cost (the timing model prices the fetch unit's
    # restart after each, as the RTL pays it), so it is chosen only where the timing model has it faster.
    assert "fusion: skip(" in out and "skip zero blocks (50% zero)" in out and float(match[10]) > 0
    if "-> skip zero blocks (50% zero)" in out:
        assert float(match[11]) > 1
    else:
        assert float(match[11]) == 1.0
    assert "random control-flow programs on tiny: 3, mismatching: 0" in out
    # Section 6: the digits models with the default loops (rolled only where the timing model, which
    # prices each taken BRANCH's fetch restart and refill, predicts no slower) give the straight-line
    # programs' outputs (counted in mismatches=0), and the timing model kept no loop it predicts slower.
    assert float(match[14]) >= 1 and 0.9 < float(match[15]) < 1.1
    golden_ratios = [float(line.split()[7]) for line in out.splitlines()
                     if line.strip().startswith(("tiny ", "default ")) and len(line.split()) >= 8]
    assert len(golden_ratios) == 4 and max(golden_ratios) <= 1.0


def test_an_m_tile_below_the_array_height_is_refused():
    with pytest.raises(KernelError, match="an M tile of 2 rows does not fit"):
        looped_gemm(TINY, 8, 8, 8, m=2)


@pytest.mark.parametrize("options", [dict(out="int32"), dict(bias=True, requant=True, act="relu", out_zp=-3),
                                     dict(bias=True, act="clip", clip=(-40, 50), out="int32")])
def test_skipping_library_gemm_equals_gemm_and_its_predictions(options):
    from braze.sim.device import open_device
    from braze.sw.compiler.kernels import gemm, run_kernel
    from braze.sw.compiler.kernels.looped import skipping_gemm

    M, K, N = 12, 32, 8
    rng = np.random.default_rng(11)
    reference, skipping = gemm(TINY, M, K, N, **options), skipping_gemm(TINY, M, K, N, **options)
    assert skipping.tiling["m"] == 12 and skipping.operands.keys() == reference.operands.keys()
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    params = {"bias": rng.integers(-900, 900, N), "mult": rng.integers(1 << 20, 1 << 23, N),
              "shift": rng.integers(20, 26, N)}
    tested = K // TINY.rows - 1                 # an M tile's first block is computed untested
    cycles = {}
    for zero_fraction in (0.0, 3 / 7):
        a = rng.integers(1, 128, (M, K), dtype=np.int8)
        # Zero blocks where spread_predicate puts them: the prediction is then the run's schedule.
        for test in range(tested):
            if math.floor((test + 1) * zero_fraction) > math.floor(test * zero_fraction):
                a[:, (test + 1) * TINY.rows:(test + 2) * TINY.rows] = 0
        inputs = {"A": a, "B": b}
        if reference.param_rows:
            inputs["params"] = np.stack([params[row] for row in reference.param_rows]).astype(np.int32)
        with open_device("golden", TINY) as device:
            want = run_kernel(device, reference, inputs)
            have = run_kernel(device, skipping, inputs)
        assert np.array_equal(have.outputs["out"], want.outputs["out"])
        assert have.counters["insn_matmul"] == round((1 - zero_fraction) * tested + 1) * (N // TINY.cols)
        cycles[zero_fraction] = have.cycles
        assert have.cycles == skipping.cycles_at(zero_fraction)
    assert cycles[0.0] == skipping.predicted_cycles > cycles[3 / 7]


def test_skipping_library_gemm_refuses_what_it_cannot_tile():
    from braze.sw.compiler.kernels.looped import skipping_gemm

    with pytest.raises(KernelError, match="K must be a multiple of rows=4"):
        skipping_gemm(TINY, 8, 6, 4)
    with pytest.raises(KernelError, match="no M tile of at least 4 rows"):
        skipping_gemm(TINY, 2, 8, 4)        # fewer rows than the array's height



def test_a_coarse_block_is_skipped_only_when_all_its_chunks_are_zero():
    rng = np.random.default_rng(11)
    M, K, N, m, chunks = 8, 32, 8, 8, 2
    depth = chunks * TINY.rows
    a = rng.integers(1, 128, (M, K), dtype=np.int8)
    a[:, 1 * depth:2 * depth] = 0               # block 1: both chunks zero -> skipped
    a[:, 2 * depth:2 * depth + TINY.rows] = 0   # block 2: one chunk of two zero -> computed
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    run, c = run_looped(looped_gemm(TINY, M, K, N, m=m, skip_zero_blocks=True, chunks=chunks), a, b)
    assert np.array_equal(c, a.astype(np.int64) @ b)
    n_tiles, blocks = N // TINY.cols, K // depth
    assert run.counters["insn_matmul"] == (blocks - 1) * n_tiles
    assert run.counters["macs"] == (blocks - 1) * n_tiles * m * TINY.cols * depth


def test_best_skipping_chunks_is_the_fastest_predicted_block_size():
    from braze.sw.compiler.kernels.looped import SKIPPING_CHUNKS, best_skipping_chunks, skipping_gemm

    config = Config.parse("default")
    M, K, N = 64, 256, 64
    for fractions in ({c: 0.0 for c in SKIPPING_CHUNKS}, {1: 0.9, 2: 0.8, 4: 0.5, 8: 0.25}):
        chunks, fraction = best_skipping_chunks(config, M, K, N, fractions.get, out="int32")
        assert fraction == fractions[chunks]
        cycles = {c: skipping_gemm(config, M, K, N, out="int32", chunks=c,
                                   expected_zero_fraction=f).predicted_cycles for c, f in fractions.items()}
        assert cycles[chunks] == min(cycles.values())
    # Dense, a coarse block pays a MATMUL's fixed cycles less often; mostly zero at 8 columns only,
    # the finest block skips most.
    assert best_skipping_chunks(config, M, K, N, {c: 0.0 for c in SKIPPING_CHUNKS}.get)[0] > 1
    assert best_skipping_chunks(config, M, K, N, {1: 0.9, 2: 0.0, 4: 0.0, 8: 0.0}.get)[0] == 1
    with pytest.raises(KernelError, match="no block size"):
        best_skipping_chunks(config, M, K, N, lambda chunks: None)


def test_skipping_gemm_with_coarser_blocks_matches_gemm():
    from braze.sim.device import open_device
    from braze.sw.compiler.kernels import gemm, run_kernel
    from braze.sw.compiler.kernels.looped import skipping_gemm

    rng = np.random.default_rng(5)
    M, K, N, chunks = 8, 32, 8, 2
    a = rng.integers(0, 128, (M, K), dtype=np.int8)
    a[:, 8:16] = 0
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    bias = rng.integers(-1000, 1000, N, dtype=np.int32)
    reference = gemm(TINY, M, K, N, bias=True, act="relu", out="int32")
    skipping = skipping_gemm(TINY, M, K, N, bias=True, act="relu", out="int32", chunks=chunks)
    assert skipping.tiling["chunks"] == chunks
    with open_device("golden", TINY) as device:
        want = run_kernel(device, reference, {"A": a, "B": b, "params": bias[None]})
        have = run_kernel(device, skipping, {"A": a, "B": b, "params": bias[None]})
    assert np.array_equal(have.outputs["out"], want.outputs["out"])
    assert have.counters["insn_matmul"] < K // (chunks * TINY.rows) * (N // TINY.cols)
    with pytest.raises(KernelError, match=re.escape("K must be a multiple of rows=4 x chunks=4")):
        skipping_gemm(TINY, 8, 24, 4, chunks=4)
