"""A build without a VECTOR unit, with 32-bit counters (Config.vector_unit=0, counter_bits=32), on the RTL
(Amaranth simulator) against the reference model: a VECTOR stops the run with ILLEGAL_OPCODE at its pc,
and a program without one gives the same exact counters (issue 16)."""

from __future__ import annotations

import numpy as np

from braze.isa import COUNTERS, Config, ErrorCause, assemble
from braze.sim.device import open_device

SMALL = Config.preset("tiny").replace(name="tiny_small_fpga", vector_unit=0, counter_bits=32)
BASE, DATA, OUT = 0x4000, 0x1000, 0x2000

GEMM = """
    load mem=spad addr=0 rows=4 len=4 dram=0x1000 stride=4
    load mem=spad addr=4 rows=4 len=4 dram=0x1010 stride=4 push_next
    matmul acc=0 a=0 b=4 a_stride=4 m=4 n=4 k=4 pop_prev push_next
    store mem=acc addr=0 rows=4 len=4 dram=0x2000 stride=16 pop_prev
"""
#: The GEMM, then a VECTOR: the run stops there, after the GEMM's STORE has completed (a fence first).
STOPPED = GEMM + """
    fence
    vector op=add dst_mem=spad src1_mem=spad src2_mem=spad dst=8 src1=0 src2=4 rows=4
    halt
"""


def _run(kind: str, source: str):
    data = (np.arange(256) % 97 - 48).astype(np.int8)
    with open_device(kind, SMALL) as device:
        device.write(DATA, np.resize(data, 1024).tobytes())
        status = device.run(assemble(source), base=BASE, check=False)
        exact = {spec.name: status.counters[spec.name] for spec in COUNTERS if spec.exact}
        return status, exact, device.read(OUT, 64)


def test_vector_stops_the_rtl_as_the_reference_model():
    golden, _, golden_out = _run("golden", STOPPED)
    rtl, _, rtl_out = _run("amaranth", STOPPED)
    assert golden.cause is rtl.cause is ErrorCause.ILLEGAL_OPCODE
    assert golden.error_pc == rtl.error_pc == BASE + 16 * 5
    assert golden_out == rtl_out


def test_exact_counters_match_with_32_bit_counters():
    golden, golden_exact, golden_out = _run("golden", GEMM + "halt")
    rtl, rtl_exact, rtl_out = _run("amaranth", GEMM + "halt")
    assert golden.ok and rtl.ok, (golden.detail, rtl.detail)
    assert rtl_exact == golden_exact and rtl_exact["macs"] == 64
    assert rtl_out == golden_out
