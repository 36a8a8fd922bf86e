"""Feature version 9: a kernel's cycles are what its final snapshot counts (from reset, the first word's
fetch included, to the start of the COUNTERS), and ``braze bench hpm`` tops up the worst measurements
made once (``repeat_worst_measured_once``)."""

from __future__ import annotations

import importlib

from braze.isa import Config, Instruction, Memory, Opcode
from braze.isa.encoding import VectorOp
from braze.isa.timing import fetch_redirect_cycles
from braze.sw.hpm import evaluate, features
from braze.sw.hpm.evaluate import FamilyScore, WorstMeasurement
from braze.sw.hpm.features import MemorySystem, memory_aware_cycles, snapshot_start_cycles
from braze.sw.hpm.store import HistoryStore, RunRecord, pack_program

# The module (the package's ``calibrate`` is the function of that name).
calibrate = importlib.import_module("braze.sw.hpm.calibrate")
TINY = Config.preset("tiny")
DEFAULT = Config.preset("default")


def _load(index: int = 0) -> Instruction:
    return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=8 * index, rows=4, len=4,
                            dram=1024 + 64 * index, stride=64)


def _snapshot() -> Instruction:
    return Instruction.make(Opcode.COUNTERS, dram=65536, reset=True)


def _priced(program, config: Config, stall: float = 0.0) -> int:
    return memory_aware_cycles(program, config, MemorySystem(config.mem_latency, stall))


def test_a_lone_snapshot_counts_the_first_fetch_only():
    # Measured on the Verilator device: 19 cycles on tiny, 26 on default.
    for config in (TINY, DEFAULT):
        expected = fetch_redirect_cycles(config) + features.SNAPSHOT_START_CYCLES
        assert _priced([_snapshot()], config) == expected
    assert _priced([_snapshot()], TINY) == 19 and _priced([_snapshot()], DEFAULT) == 26


def test_the_snapshot_s_own_write_is_not_priced_nor_stretched_by_backpressure():
    loads = [_load(0), _load(1)]
    alone = _priced(loads, TINY)
    # Without a snapshot at the end, the program is priced as before (no fetch added)...
    with_snapshot = _priced([*loads, _snapshot()], TINY)
    assert with_snapshot == alone - 1 + snapshot_start_cycles(TINY, MemorySystem(TINY.mem_latency, 0.0))
    # ... and at backpressure 0.4 the snapshot adds only the first word's stretched fetch, not its 28
    # stretched beats: what the LOADs add is the same with or without it.
    fetch_grown = (snapshot_start_cycles(TINY, MemorySystem(TINY.mem_latency, 0.4))
                   - snapshot_start_cycles(TINY, MemorySystem.nominal(TINY)))
    assert 0 < fetch_grown <= 2
    grown = _priced([*loads, _snapshot()], TINY, 0.4) - with_snapshot
    assert grown == (_priced(loads, TINY, 0.4) - alone) + fetch_grown


def test_a_snapshot_before_the_end_is_still_priced_as_it_runs():
    middle = [_load(0), _snapshot(), _load(1)]
    assert _priced(middle, TINY) > _priced([_load(0), _load(1)], TINY) + 30


def _run(signature_hash: str, stall: float, source: str = "calibrate") -> RunRecord:
    return RunRecord(family="gemm", signature={"family": "gemm", "n": signature_hash}, config_name="tiny",
                     config=TINY.to_dict(), device="verilator", read_latency=TINY.mem_latency, stall=stall,
                     features={}, counters={"cycles": 100}, source=source, program=pack_program([_load()]),
                     stall_seed=1)


def test_the_bench_repeats_the_calibration_runs_of_the_worst_measurements_made_once(tmp_path, monkeypatch):
    store = HistoryStore(tmp_path / "history.sqlite")
    runs = {name: _run(name, 0.4) for name in ("worst", "second", "good")}
    for run in runs.values():
        store.add(run)
    session = _run("session", 0.4, source="runtime")       # recorded by a session, not by calibration
    store.add(session)
    score = FamilyScore("gemm", 3, 0.0, 0.0, 0.0, 0.0)
    learned = {"worst": 130.0, "second": 88.0, "good": 101.0, "session": 150.0}
    score.worst = [WorstMeasurement("gemm", "tiny", 0.4, 1, 100.0, 100.0, 100.0, learned[name], run.signature)
                   for name, run in {**runs, "session": session}.items()]
    monkeypatch.setattr(evaluate, "holdout_by_family", lambda records, regressor: [score])
    asked = {}

    def repeat(store, groups, **options):
        asked.update(groups=groups, **options)
        return calibrate.CalibrationReport()

    monkeypatch.setattr(calibrate, "repeat_measurements", repeat)
    calibrate.repeat_worst_measured_once(store, [], worst=3, repeats=3, budget_seconds=60, progress=None)
    # The three worst are session, worst and second; the session's run is not a calibration run.
    chosen = sorted(group[0].signature["n"] for group in asked["groups"])
    assert chosen == ["second", "worst"]
    assert all(len(group) == 1 and group[0].program is not None for group in asked["groups"])
    assert (asked["repeats"], asked["budget_seconds"]) == (3, 60)



def _add(dst_mem: Memory) -> Instruction:
    return Instruction.make(Opcode.VECTOR, op=VectorOp.ADD, dst_mem=dst_mem, src1_mem=Memory.SPAD,
                            src2_mem=Memory.SPAD, use_imm=False, dst=1024, src1=0, src2=512, rows=256)


def _long_load() -> Instruction:
    return Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=2048, rows=400, len=DEFAULT.cols, dram=0,
                            stride=DEFAULT.cols)


def test_a_load_beside_a_vector_writing_its_memory_every_other_cycle_goes_at_its_pace(monkeypatch):
    # The VECTOR (two reads per row: a row every other cycle, 516 cycles) and the LOAD (400 one-beat
    # rows) start together, so the LOAD's rows overlap it and the program ends with the LOAD.
    program = [_add(Memory.SPAD), _long_load()]
    elsewhere = [_add(Memory.ACC), _long_load()]       # the VECTOR writes the accumulator
    stepped, stepped_elsewhere = _priced(program, DEFAULT), _priced(elsewhere, DEFAULT)
    monkeypatch.setattr(features, "_stepped_write_pace", lambda insn: 0.0)
    # In step about half of the overlapped cycles are lost (~200); at random, a quarter of the VECTOR's
    # accesses of the scratchpad per LOAD row (~100).
    assert _priced(program, DEFAULT) + 50 <= stepped
    # A VECTOR writing another memory: nothing in step (its reads conflict at random, as before).
    assert _priced(elsewhere, DEFAULT) == stepped_elsewhere
