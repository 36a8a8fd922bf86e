"""The Amaranth-simulator device: same interface, same results as the reference model."""

import numpy as np

from braze.isa import Config, ErrorCause, Instruction, assemble
from braze.sim import verify
from braze.sim.device import DeviceError, open_device

TINY = Config.preset("tiny")


def test_random_programs_match_the_reference_model():
    report = verify.verify(lambda config: open_device("amaranth", config), TINY, programs=4, seed=11)
    assert report.programs == 4
    assert report.mismatches == 0, report.summary()


def test_error_status_and_recovery_on_one_device():
    with open_device("amaranth", TINY) as device:
        bad = [Instruction.make("load", mem="spad", addr=TINY.spad_rows - 1, rows=2, len=4, dram=0x400),
               Instruction.make("halt")]
        status = device.run(bad, base=0x100, check=False)
        assert status.cause is ErrorCause.SPAD_RANGE and status.error_pc == 0x100
        try:
            device.run(bad, base=0x100)
        except DeviceError as error:
            assert "spad_range" in str(error)
        else:
            raise AssertionError("an error status must raise with check=True")
        # The same device runs a good program afterwards, and on-chip state persists.
        device.write(0x400, np.arange(16, dtype=np.int8))
        good = assemble("""
            load mem=spad addr=3 rows=4 len=4 dram=0x400 stride=4 push_next
            vector op=add dst_mem=spad src1_mem=spad dst=3 src1=3 src2=3 rows=4 pop_prev push_next
            store mem=spad addr=3 rows=4 len=4 dram=0x800 stride=4 pop_prev
            halt
        """)
        status = device.run(good, base=0x100)
        assert status.ok and status.counters["insn_vector"] == 1
        assert device.read_array(0x800, (16,), np.int8).tolist() == [2 * v for v in range(16)]


def test_cycle_budget_stops_a_run_and_the_device_recovers():
    with open_device("amaranth", TINY) as device:
        long_program = [Instruction.make("load", mem="spad", addr=0, rows=200, len=4, dram=0x1000, stride=4),
                        Instruction.make("halt")]
        status = device.run(long_program, base=0, max_cycles=20, check=False)
        assert status.timed_out and not status.ok
        assert device.run([Instruction.make("halt")], base=0x200).ok


def test_overlapped_loads_match_the_reference_model():
    """load_overlap=2 under backpressure: random programs, and a failing LOAD behind a good one."""
    config = TINY.replace(name="tiny_lo2", load_overlap=2)
    report = verify.verify(lambda c: open_device("amaranth", c, stall=0.3), config, programs=3, seed=31)
    assert report.programs == 3
    assert report.mismatches == 0, report.summary()
    past_end = config.dram_bytes - 8
    program = [Instruction.make("load", mem="spad", addr=0, rows=6, len=4, dram=0x400, stride=4),
               Instruction.make("load", mem="acc", addr=0, rows=3, len=1, dram=past_end, stride=8),
               Instruction.make("load", mem="spad", addr=8, rows=2, len=4, dram=0x400, stride=4),
               Instruction.make("halt")]
    statuses = []
    for kind in ("golden", "amaranth"):
        with open_device(kind, config) as device:
            status = device.run(program, base=0x100, check=False)
            statuses.append((status.cause, status.error_pc))
    assert statuses[0] == statuses[1] == (ErrorCause.DRAM_RANGE, 0x110)


def test_weight_preload_matches_the_reference_model():
    """weight_preload=1 under backpressure: random programs give the reference model's results, and
    the PE array's busy cycles (a timing counter verify leaves out) are exactly the timing model's --
    fewer than without preload, so the programs do overlap weight loads."""
    from braze.isa.timing import schedule
    from braze.sim.device import GoldenDevice
    from braze.sim.progen import generate
    from braze.sim.verify import run_and_compare

    config = TINY.replace(name="tiny_wp", weight_preload=1)
    serial_busy = preload_busy = 0
    for seed in (41, 42, 43):
        program = generate(config, seed)
        with open_device("amaranth", config, stall=0.3) as device:
            golden_status, status, mismatches = run_and_compare(program, GoldenDevice(config), device)
        assert mismatches == [], (seed, mismatches)
        assert status.counters["array_busy"] == golden_status.counters["array_busy"], seed
        preload_busy += status.counters["array_busy"]
        serial_busy += schedule(list(program.instructions), TINY, base=program.base).busy["array_busy"]
    assert 0 < preload_busy < serial_busy
