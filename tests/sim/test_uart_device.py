"""The board top over its UART, as a device: a kernel and an error run, against the reference model.

The whole board top (accelerator, block-RAM memory, UART bridge) runs in Amaranth's simulator
and every byte crosses its UART bit by bit (2 clocks a bit), so this is the slowest test of the
bridge: one device serves both runs, and only the kernel's outputs and counter snapshot are read
back (the whole operand region again would double the test's time).
"""

import numpy as np
import pytest

from braze.hw.board import BridgeTop, board_config
from braze.isa import COUNTERS, BrazeError, Config, ErrorCause, Instruction, Opcode
from braze.isa.counters import SNAPSHOT_BYTES, parse_snapshot
from braze.sim.device import DEVICES, open_device
from braze.sim.uart_device import SimulatedBoard
from braze.sw.compiler import kernels as K

BOARD_TINY = board_config(Config.preset("tiny"))
PROGRAM_ADDR = 0x400


def _exact(counters: dict[str, int]) -> dict[str, int]:
    return {spec.name: counters[spec.name] for spec in COUNTERS if spec.exact}


@pytest.mark.slow
def test_gemm_and_an_error_run_match_the_reference_model():
    rng = np.random.default_rng(16)
    kernel = K.gemm(BOARD_TINY, 4, 8, 4, bias=True)
    a, b = rng.integers(-128, 128, (4, 8)).astype(np.int8), rng.integers(-128, 128, (8, 4)).astype(np.int8)
    bias = rng.integers(-500, 500, 4)
    inputs = {"A": a, "B": b, "params": K.pack_params(kernel, bias=bias)}
    expected = np.clip(a.astype(np.int64) @ b + bias, -128, 127)
    # Its second row lies past the end of the board memory.
    bad = [Instruction.make("load", mem="spad", addr=0, rows=2, len=4, stride=4,
                            dram=BOARD_TINY.dram_bytes - 4),
           Instruction.make("halt")]
    # The kernel's COUNTERS snapshot resets the counters; without the reset, the counters read over
    # the UART at the end of the run hold the whole run too.
    program = [Instruction.make("counters", dram=insn.args["dram"], reset=False)
               if insn.opcode is Opcode.COUNTERS else insn for insn in kernel.program()]
    results = {}
    for kind in ("golden", "uart"):
        with open_device(kind, BOARD_TINY) as device:
            for name, value in inputs.items():
                device.write(kernel.operands[name].addr, value)
            status = device.run(program, base=PROGRAM_ADDR)
            out = kernel.operands["out"]
            output = device.read_array(out.addr, out.shape, out.dtype)
            snapshot = parse_snapshot(device.read(kernel.operands["counters"].addr, SNAPSHOT_BYTES))
            bad_status = device.run(bad, base=0x800, check=False)
            results[kind] = (status, output, snapshot, bad_status)
            if kind == "uart":
                assert device.transport.framing_errors == 0
    (golden, golden_out, golden_snapshot, golden_bad), (board, board_out, board_snapshot, board_bad) = \
        results["golden"], results["uart"]
    assert np.array_equal(board_out, golden_out)
    assert np.array_equal(board_out, expected)
    # Counters over the UART (the CSRs) and in memory (the COUNTERS snapshot).
    assert _exact(board.counters) == _exact(golden.counters)
    assert _exact(board_snapshot) == _exact(golden_snapshot)
    assert board.counters["insn_matmul"] == golden.counters["insn_matmul"] > 0
    # RUN_CYCLES excludes the cycle the core stops in; the cycles counter includes it.
    assert board.cycles == board.counters["cycles"] - 1 > 0
    assert (board_bad.cause, board_bad.error_pc) == (golden_bad.cause, golden_bad.error_pc) \
        == (ErrorCause.DRAM_RANGE, 0x800)


def test_uart_device_is_a_registered_back_end_and_checks_its_board():
    assert "uart" in DEVICES
    # A board built for another memory size is refused: its DMA range checks would not match.  (The
    # bridge half of the board answers INFO as the whole board does, and simulates much faster.)
    board = SimulatedBoard(BOARD_TINY, top=BridgeTop(BOARD_TINY, divisor=2), divisor=2)
    with pytest.raises(BrazeError, match="65536 bytes of memory.*expects 131072"):
        open_device("uart", BOARD_TINY.replace(dram_bytes=1 << 17), transport=board)
