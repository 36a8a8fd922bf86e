"""Streams of small kernels: cross-kernel pipelining and weights resident across calls (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from braze.isa import Activation, Config, Instruction, Memory, Opcode
from braze.isa.arith import epilogue
from braze.isa.timing import schedule
from braze.sim.device import GoldenDevice
from braze.sw.compiler import kernels
from braze.sw.compiler.lower import relocate
from braze.sw.compiler.stream import (
    StreamError,
    fastest_stream,
    pipeline,
    resident_loads,
    steady_cycles_per_call,
    stream,
)

TINY = Config.preset("tiny")
DEFAULT = Config.preset("default")
EPILOGUE = dict(bias=True, requant=True, act="relu", out="int8")


def _tiling(kernel) -> kernels.Tiling:
    return kernels.Tiling(**{name: kernel.tiling[name] for name in kernels.Tiling.__dataclass_fields__})


def _uncut(kernel):
    """The GEMM ``kernel`` at its tiling without the lead-in and tail cuts (repeated tiles: loops apply)."""
    M, K = kernel.operands["A"].shape
    return kernels.gemm(kernel.config, M, K, kernel.operands["out"].shape[1], **EPILOGUE,
                        tiling=_tiling(kernel).uncut())


def _calls(kernel, calls: int, seed: int = 0):
    """Shared parameters, per-call inputs and the exact outputs of a GEMM kernel's calls."""
    rng = np.random.default_rng(seed)
    M, K = kernel.operands["A"].shape
    N = kernel.operands["out"].shape[1]
    b = rng.integers(-128, 128, size=(K, N), dtype=np.int8)
    bias, mult, shift = rng.integers(-500, 500, N), rng.integers(1 << 12, 1 << 14, N), np.full(N, 16)
    params = {"B": b, "params": kernels.pack_params(kernel, bias=bias, mult=mult, shift=shift)}
    inputs = [{"A": rng.integers(-128, 128, size=(M, K), dtype=np.int8)} for _ in range(calls)]
    expected = [epilogue(x["A"].astype(np.int64) @ b.astype(np.int64), bias=bias, mult=mult, shift=shift,
                         act=Activation.RELU, out=Memory.SPAD) for x in inputs]
    return params, inputs, expected


@pytest.mark.parametrize("config, shape", [(TINY, (2, 16, 8)), (DEFAULT, (1, 64, 10)),
                                           (DEFAULT, (16, 16, 16))])
def test_a_stream_computes_every_call_exactly_without_races(config, shape):
    kernel = kernels.gemm(config, *shape, **EPILOGUE)
    params, inputs, expected = _calls(kernel, 5)
    device = GoldenDevice(config)                 # the reference model checks every token against the data
    result = stream(kernel, 5).run(device, params, inputs)
    for out, want in zip(result.outputs, expected, strict=True):
        np.testing.assert_array_equal(out["out"], want)
    assert result.counters["macs"] == 5 * kernel.macs


def test_weights_stay_resident_after_the_first_call():
    kernel = kernels.gemm(DEFAULT, 1, 64, 10, **EPILOGUE)
    loads = resident_loads(kernel)
    # Every LOAD of B and of the bias/requantize rows, and nothing else.
    param_loads = [i for i, insn in enumerate(kernel.instructions) if insn.opcode is Opcode.LOAD
                   and kernel.operands["B"].addr <= insn.dram < kernel.operands["params"].end]
    assert loads == param_loads and loads
    params, inputs, _ = _calls(kernel, 4)
    device = GoldenDevice(DEFAULT)
    one, four = (stream(kernel, n).run(device, params, inputs[:n]).counters for n in (1, 4))
    resident = stream(kernel, 4).resident_bytes
    assert resident == kernel.operands["B"].nbytes + kernel.operands["params"].nbytes
    # Each later call reads only its activations.
    assert four["dma_read_bytes"] - one["dma_read_bytes"] == 3 * (one["dma_read_bytes"] - resident)
    not_resident = stream(kernel, 4, resident=False).run(device, params, inputs).counters
    assert not_resident["dma_read_bytes"] == 4 * one["dma_read_bytes"]
    assert four["cycles"] < not_resident["cycles"]


def test_weights_that_do_not_fit_are_loaded_by_every_call():
    # 256 x 256 int8 weights fill the default scratchpad: the kernel streams B through ring slots.
    kernel = kernels.gemm(DEFAULT, 1, 256, 256, **EPILOGUE)
    b = kernel.operands["B"]
    assert not any(b.addr <= kernel.instructions[i].dram < b.end for i in resident_loads(kernel))


def test_pipelined_calls_overlap_where_barriers_serialised_them():
    kernel = kernels.gemm(DEFAULT, 16, 16, 16, **EPILOGUE)
    calls = [relocate(kernel, {"A": 4096 + 1024 * i, "out": 4096 + 1024 * i + 512,
                               "counters": 65536 + 256 * i}) for i in range(4)]
    linked = kernels.link(calls)                      # a COUNTERS barrier after each call
    unpinned = stream(kernel, 4, resident=False)      # the same work, pipelined, weights reloaded
    assert not any(insn.opcode in (Opcode.FENCE, Opcode.COUNTERS) for insn in unpinned.instructions[:-1])
    assert schedule(unpinned.program(), DEFAULT).cycles < schedule(linked, DEFAULT).cycles - 3 * 16


def test_a_load_of_what_a_store_wrote_gets_a_fence():
    first = kernels.relu(TINY, (4, 8))
    second = kernels.relu(TINY, (4, 8), addrs={"x": first.operands["out"].addr, "out": 512, "counters": 768})
    program = [insn for insn in first.instructions + second.instructions
               if insn.opcode is not Opcode.COUNTERS]
    piped = pipeline(program, TINY)
    assert [insn.opcode for insn in piped].count(Opcode.FENCE) == 1
    device = GoldenDevice(TINY)
    x = np.arange(-16, 16, dtype=np.int8).reshape(4, 8)
    device.write(0, x)
    device.run(piped + [Instruction.make(Opcode.HALT)], base=1024)
    np.testing.assert_array_equal(device.read_array(512, (4, 8), np.int8), np.maximum(x, 0))


def test_bad_streams_are_refused_with_a_reason():
    kernel = kernels.gemm(TINY, 2, 16, 8, **EPILOGUE)
    with pytest.raises(StreamError, match="calls must be a positive integer"):
        stream(kernel, 0)
    branchy = [Instruction.make(Opcode.SCALAR, dst=1, src1=0, imm=1)] + kernel.instructions
    with pytest.raises(StreamError, match="instruction 0 .SCALAR. is control flow"):
        pipeline(branchy, TINY)
    params, inputs, _ = _calls(kernel, 2)
    with pytest.raises(StreamError, match="2 calls given 1 input"):
        stream(kernel, 2).run(GoldenDevice(TINY), params, inputs[:1])
    with pytest.raises(StreamError, match="no call 1 input named 'X'"):
        stream(kernel, 2).run(GoldenDevice(TINY), params, [inputs[0], {"X": inputs[1]["A"]}])


def test_tokens_that_would_deadlock_in_program_order_are_refused():
    # 30 LOADs, then 30 VECTORs each reading one of them: 30 load->compute tokens in flight before the
    # first VECTOR is even dispatched -- more than the token queue and the load queue hold.
    loads = [Instruction.make(Opcode.LOAD, mem="spad", addr=i, rows=1, len=4, zero=True) for i in range(30)]
    reads = [Instruction.make(Opcode.VECTOR, op="mov", dst_mem="spad", src1_mem="spad", dst=100 + i, src1=i,
                              rows=1) for i in range(30)]
    with pytest.raises(StreamError, match="cannot run in this order"):
        pipeline(loads + reads, TINY)
    interleaved = [insn for pair in zip(loads, reads, strict=True) for insn in pair]
    assert sum("push_next" in insn.deps for insn in pipeline(interleaved, TINY)) == 30


def test_the_fastest_tiling_in_a_stream_is_chosen_by_its_steady_state_and_computes_exactly():
    # The packed GEMM of 16 calls of 16x16x16: alone the library keeps two M tiles, in a stream one
    # tile of all 256 rows is faster (the next call's loads overlap this one's compute anyway).
    library = _uncut(kernels.gemm(DEFAULT, 256, 16, 16, **EPILOGUE))
    candidates = [library] + [kernels.gemm(DEFAULT, 256, 16, 16, **EPILOGUE, tiling=tiling)
                              for tiling in kernels.candidate_tilings(library)[:4]]
    steady = [steady_cycles_per_call(kernel, 3) for kernel in candidates]
    chosen = fastest_stream(candidates, 3)
    assert steady_cycles_per_call(chosen, 3) == min(steady) < steady[0]
    assert chosen.tiling["m"] != library.tiling["m"]
    # Chosen by other cycles (a device's measurements, say) when given them.
    slowest = fastest_stream(candidates, 3, lambda kernel, calls: -steady_cycles_per_call(kernel, calls))
    assert steady_cycles_per_call(slowest, 3) == max(steady)
    params, inputs, expected = _calls(chosen, 3)
    result = stream(chosen, 3).run(GoldenDevice(DEFAULT), params, inputs)
    for out, want in zip(result.outputs, expected, strict=True):
        np.testing.assert_array_equal(out["out"], want)


def test_the_fastest_stream_passes_over_kernels_that_cannot_be_streamed():
    # 64x256x64: on the overlapped default the cuts of a 64^3 GEMM's first and last tiles leave no
    # run that repeats, so it would not roll; this one does.
    plain = kernels.gemm(DEFAULT, 64, 256, 64, **EPILOGUE)
    looped = kernels.gemm(DEFAULT, 64, 256, 64, **EPILOGUE, loops=True)
    assert any(insn.opcode is Opcode.BRANCH for insn in looped.instructions)
    assert fastest_stream([looped, plain], 2) is plain
    with pytest.raises(StreamError, match="no candidate kernel can be streamed: pipeline"):
        fastest_stream([looped], 2)
    with pytest.raises(StreamError, match="at least 2 calls"):
        steady_cycles_per_call(plain, 1)
