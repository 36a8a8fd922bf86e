"""One watchdog on every back end: a runaway program stops with WATCHDOG at its cycle limit.

Regression tests of issue 10, defect 2: a program with no HALT took minutes on the golden and
Verilator devices and an hour on Amaranth's, each bounded differently, the cocotb server leaning
on its 300 s socket timeout.
"""

from __future__ import annotations

import pytest

from braze.isa import BrazeError, Config, ErrorCause, Instruction, encode_program
from braze.sim import verify
from braze.sim.device import DeviceError, GoldenDevice, open_device
from braze.sim.verilator_device import VerilatorDevice

TINY = Config.preset("tiny")
BASE = 0x1000
ROWS = 255
#: Cycles of one VECTOR (two scratchpad reads per row) and of the FENCE after it, on every back end.
PERIOD = 2 * ROWS + 4 + 1


def _runaway_image() -> bytes:
    """Pairs of a long VECTOR and a FENCE, up to the end of external memory: no HALT."""
    pair = encode_program([
        Instruction.make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=0, src1=0,
                         src2=ROWS, rows=ROWS),
        Instruction.make("fence")])
    return pair * ((TINY.dram_bytes - BASE) // len(pair))


def test_a_runaway_program_stops_at_the_same_cycle_and_pc_on_every_back_end():
    # The limit falls in the middle of the fourth VECTOR, whose FENCE is then waiting in the
    # dispatcher: the hardware's fetch latencies (a few cycles per FENCE) cannot move it across.
    limit = 3 * PERIOD + PERIOD // 2
    fourth_fence = BASE + 16 * (2 * 3 + 1)
    image = _runaway_image()
    seen = {}
    for kind in ("golden", "amaranth", "verilator"):
        with open_device(kind, TINY) as device:
            device.write(BASE, image)
            message = f"{kind} device stopped with watchdog at pc 0x{fourth_fence:x}"
            with pytest.raises(DeviceError, match=message) as caught:
                device.run(None, base=BASE, cycle_limit=limit)
            status = caught.value.status
            seen[kind] = (status.cause, status.cycles, status.error_pc, status.timed_out)
    assert set(seen.values()) == {(ErrorCause.WATCHDOG, limit, fourth_fence, False)}, seen


def test_random_programs_stop_at_their_limit_on_verilator_as_on_the_model():
    report = verify.verify(lambda config: open_device("verilator", config), TINY, programs=24, seed=500,
                           watchdog=True)
    assert report.mismatches == 0, report.summary()
    stopped = [result.watchdog for result in report.results]
    assert all(w is not None and w.device_pc is not None and w.device_pc <= w.golden_pc for w in stopped)
    assert "device pc = reference pc in" in report.summary()


def test_random_programs_stop_at_their_limit_under_backpressure():
    report = verify.verify(lambda config: open_device("verilator", config, stall=0.4), TINY, programs=8,
                           seed=600, watchdog=True)
    assert report.mismatches == 0, report.summary()


def test_a_device_that_ignores_the_limit_is_a_mismatch():
    class NoWatchdog(GoldenDevice):
        kind = "no-watchdog"

        def _execute(self, base, max_cycles, cycle_limit):
            return super()._execute(base, max_cycles, 0)

    report = verify.verify(NoWatchdog, TINY, programs=3, seed=9, watchdog=True)
    assert report.mismatches == 3
    assert all("expected watchdog at run cycle" in r.mismatches[0].detail for r in report.results)


def test_a_run_with_no_limit_answers_before_the_device_gives_up_on_the_simulator():
    """Without a cycle limit the simulator stops the run itself, within the request's timeout, and
    stays: no killed simulator, no lost memory."""
    with VerilatorDevice(TINY, timeout=3) as device:
        device.write(BASE, _runaway_image())
        pid = device.pid
        status = device.run(None, base=BASE, check=False)
        assert status.timed_out and "wall-clock" in status.detail
        assert device.pid == pid and device.memory_generation == 0
        assert device.run([Instruction.make("halt")], base=0x200).ok


@pytest.mark.parametrize("bad", [-5, 1 << 32, 1.5])
def test_a_bad_cycle_limit_is_a_clear_error(bad):
    with GoldenDevice(TINY) as device, pytest.raises(BrazeError, match=r"cycle_limit=.* must be an integer"):
        device.run([Instruction.make("halt")], cycle_limit=bad)
