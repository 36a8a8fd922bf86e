"""Differential verification: golden against itself, against deliberately broken devices, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from braze import cli
from braze.isa import Config, ErrorCause, Memory, Opcode
from braze.isa.asm import assemble
from braze.isa.counters import COUNTER_BYTES, Counter
from braze.isa.model import Machine
from braze.sim import verify as verification
from braze.sim.device import DEVICES, GoldenDevice, RunStatus
from braze.sim.progen import generate

TINY = Config.preset("tiny")


class _CorruptStoreMachine(Machine):
    """Flips the low bit of the first byte every accumulator STORE writes."""

    def _exec_store(self, insn, entry):
        super()._exec_store(insn, entry)
        if insn.mem is Memory.ACC:
            self.dram[insn.dram] ^= 0x01


class _MiscountingMachine(Machine):
    """Counts one MAC too many for a MATMUL whose k is not a multiple of the array height."""

    def _exec_matmul(self, insn, entry):
        super()._exec_matmul(insn, entry)
        if insn.k % self.config.rows:
            self._count(Counter.MACS, 1)


class _SlowMachine(Machine):
    """Correct results, but its snapshots report different timing counters (which are not compared)."""

    def _exec_counters(self, insn, entry):
        super()._exec_counters(insn, entry)
        for counter in (Counter.CYCLES, Counter.STALL_DEP, Counter.STALL_AXI_READ):
            self.dram[insn.dram + counter * COUNTER_BYTES] ^= 0x5A


class CorruptStoreDevice(GoldenDevice):
    kind = "corrupt-store"

    def __init__(self, config, **options):
        super().__init__(config, **options)
        self.machine = _CorruptStoreMachine(config)


class MiscountingDevice(GoldenDevice):
    kind = "miscount-macs"

    def __init__(self, config, **options):
        super().__init__(config, **options)
        self.machine = _MiscountingMachine(config)


class SlowDevice(GoldenDevice):
    """A quarter slower than the timing model predicts."""

    kind = "slow"

    def __init__(self, config, **options):
        super().__init__(config, **options)
        self.machine = _SlowMachine(config)

    def _execute(self, base, max_cycles, cycle_limit):
        status = super()._execute(base, None, 0)
        return dataclasses.replace(status, cycles=status.cycles * 5 // 4)


class FaultingDevice(GoldenDevice):
    """Stops with an AXI error at the first instruction."""

    kind = "faulting"

    def _execute(self, base, max_cycles, cycle_limit):
        return RunStatus(ErrorCause.DRAM_RANGE, base, 3, self._counters(), detail="injected")


def test_golden_against_golden_has_no_mismatch(tmp_path):
    report = verification.verify(GoldenDevice, TINY, programs=12, seed=40, reproducer_dir=tmp_path)
    assert report.programs == 12 and report.mismatches == 0 and report.ok
    assert report.cycles_error_mean == 0 and report.cycles_error_worst == 0
    assert [r.seed for r in report.results] == list(range(40, 52))
    assert all(r.golden_cycles == r.device_cycles > 0 for r in report.results)
    assert not list(tmp_path.iterdir())
    assert "mismatches:      0" in report.summary()


def test_fresh_devices_per_program_give_the_same_answer():
    report = verification.verify(GoldenDevice, Config.preset("default"), programs=3, seed=7,
                                 reuse_devices=False)
    assert report.ok and report.programs == 3


def test_timing_difference_is_measured_not_a_mismatch():
    report = verification.verify(SlowDevice, TINY, programs=6, seed=0)
    assert report.ok, report.summary()
    assert report.cycles_error_mean == pytest.approx(0.25, abs=0.01)
    assert report.cycles_error_worst == pytest.approx(0.25, abs=0.01)


def test_corrupted_store_is_found_minimised_and_reproduced(tmp_path):
    report = verification.verify(CorruptStoreDevice, TINY, programs=3, seed=0, reproducer_dir=tmp_path,
                                 minimise_trials=40)
    programs_with_acc_stores = [
        seed for seed in range(3)
        if any(i.opcode is Opcode.STORE and i.mem is Memory.ACC for i in generate(TINY, seed).instructions)]
    assert programs_with_acc_stores, "the seeds should store accumulator rows"
    assert [r.seed for r in report.failed] == programs_with_acc_stores
    assert report.summary().count("mismatch") >= len(programs_with_acc_stores)
    result = report.failed[0]
    assert all(m.kind == "memory" for m in result.mismatches)
    first_addr, want, have = result.mismatches[0].first_bytes[0]
    assert want ^ have == 0x01

    directory = result.reproducer
    assert directory is not None and directory.parent == tmp_path
    readme = (directory / "README.md").read_text()
    assert f"braze verify --device corrupt-store --replay {directory}" in readme
    assert "First differing bytes" in readme
    # The reproducer re-assembles, is shorter, and still shows the mismatch -- only on the broken device.
    source = (directory / "program.s").read_text()
    minimised = assemble(source)
    assert len(minimised) < result.instructions
    assert any(i.opcode is Opcode.STORE and i.mem is Memory.ACC for i in minimised)
    manifest = json.loads((directory / "image.json").read_text())
    assert Config.from_dict(manifest["config"]) == TINY
    program, mismatches = verification.replay(directory, CorruptStoreDevice)
    assert list(program.instructions) == minimised
    assert mismatches and mismatches[0].kind == "memory"
    assert verification.replay(directory, GoldenDevice)[1] == []


def test_miscounted_macs_are_found(tmp_path):
    report = verification.verify(MiscountingDevice, TINY, programs=4, seed=0, reproducer_dir=tmp_path,
                                 minimise_trials=30)
    assert report.mismatches >= 1
    kinds = {m.kind for r in report.failed for m in r.mismatches}
    details = " ".join(m.detail for r in report.failed for m in r.mismatches)
    assert "counter" in kinds or "macs" in details
    assert "macs" in details
    minimised = assemble((report.failed[0].reproducer / "program.s").read_text())
    assert any(i.opcode is Opcode.MATMUL and i.k % TINY.rows for i in minimised)
    assert len(minimised) <= 4


def test_an_error_status_is_a_mismatch():
    report = verification.verify(FaultingDevice, TINY, programs=2, seed=0)
    assert report.mismatches == 2
    assert report.failed[0].mismatches[0].kind == "status"
    assert "dram_range" in report.failed[0].mismatches[0].detail
    assert report.cycles_error_mean is None
    assert "no program halted" in report.summary()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="programs=-1"):
        verification.verify(GoldenDevice, TINY, programs=-1)
    with pytest.raises(TypeError, match="Config"):
        verification.verify(GoldenDevice, "tiny")


def test_cli_verify(tmp_path, capsys, monkeypatch):
    assert cli.main(["verify", "--device", "golden", "--config", "tiny", "--programs", "4",
                     "--seed", "9"]) == 0
    out = capsys.readouterr().out
    for text in ("programs run:    4", "mismatches:      0", "cycles fidelity: mean |error| 0.00%",
                 "wall time"):
        assert text in out

    assert cli.main(["verify", "--device", "no-such-device"]) == 2
    err = capsys.readouterr().err
    assert "no-such-device" in err and "golden" in err

    monkeypatch.setitem(DEVICES, "corrupt-store", CorruptStoreDevice)
    reproducers = tmp_path / "repro"
    status = cli.main(["verify", "--device", "corrupt-store", "--programs", "2",
                       "--reproducers", str(reproducers)])
    assert status == 1
    out = capsys.readouterr().out
    assert "reproducer" in out
    directory = next(reproducers.iterdir())
    assert cli.main(["verify", "--device", "corrupt-store", "--replay", str(directory)]) == 1
    assert "mismatch" in capsys.readouterr().out
    assert cli.main(["verify", "--device", "golden", "--replay", str(directory)]) == 0
    assert cli.main(["verify", "--device", "golden", "--replay", str(tmp_path)]) == 2
    assert "not a verify reproducer" in capsys.readouterr().err


def test_timing_error_distribution_and_soak_line(capsys, monkeypatch):
    report = verification.verify(SlowDevice, TINY, programs=5, seed=3)
    rows = {name: (relative, cycles) for name, relative, cycles in report.error_distribution()}
    assert list(rows) == ["mean", "p50", "p90", "p99", "max", "min"]
    quarters = [r.golden_cycles // 4 for r in report.results]        # SlowDevice adds a quarter
    assert rows["max"][1] == max(quarters) and rows["min"][1] == min(quarters)
    assert all(abs(relative - 0.25) < 0.01 for relative, _ in rows.values())

    monkeypatch.setitem(DEVICES, "slow", SlowDevice)
    assert cli.main(["verify", "--device", "slow", "--config", "tiny", "--programs", "5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "soak: programs=5 mismatches=0"
    assert any(line.split()[:2] == ["p99", f"{rows['p99'][0]:+.2%}"] for line in lines)

    assert cli.main(["verify", "--device", "golden", "--config", "tiny", "--programs", "3",
                     "--watchdog"]) == 0
    out = capsys.readouterr().out
    assert "3 programs also run with a cycle limit below their length; device pc = reference pc in 3" in out


class _ArmedCorruptStoreMachine(_CorruptStoreMachine):
    armed = False

    def _exec_store(self, insn, entry):
        if self.armed:
            super()._exec_store(insn, entry)
        else:
            Machine._exec_store(self, insn, entry)


class FlakyDevice(GoldenDevice):
    """Corrupts accumulator STOREs only from its second run on: the bug needs state left by a run."""

    kind = "flaky"

    def __init__(self, config, **options):
        super().__init__(config, **options)
        self.machine = _ArmedCorruptStoreMachine(config)
        self.runs = 0

    def _execute(self, base, max_cycles, cycle_limit):
        self.runs += 1
        self.machine.armed = self.runs >= 2
        return super()._execute(base, max_cycles, cycle_limit)


def test_a_mismatch_that_needs_earlier_runs_is_reported_unminimised(tmp_path):
    seeds_with_acc_store = [s for s in range(20) if any(
        i.opcode is Opcode.STORE and i.mem is Memory.ACC for i in generate(TINY, s).instructions)]
    first, second = seeds_with_acc_store[:2]
    report = verification.verify(FlakyDevice, TINY, programs=second - first + 1, seed=first,
                                 reproducer_dir=tmp_path)
    assert report.results[0].mismatches == []
    failed = report.failed[0]
    assert failed.seed == second
    readme = (failed.reproducer / "README.md").read_text()
    assert "did not show when rerun on fresh devices" in readme
    assert len(assemble((failed.reproducer / "program.s").read_text())) == failed.instructions


def test_minimise_keeps_the_original_tokens_when_new_ones_lose_the_mismatch(monkeypatch):
    program = next(p for p in (generate(TINY, s) for s in range(20))
                   if any(i.opcode is Opcode.STORE and i.mem is Memory.ACC for i in p.instructions))

    def without_stores(config, instructions):
        return [i for i in instructions if i.opcode is not Opcode.STORE]

    monkeypatch.setattr(verification, "sync_tokens", without_stores)
    small, mismatches = verification.minimise(program, CorruptStoreDevice, max_trials=200)
    assert mismatches and all(m.kind == "memory" for m in mismatches)
    assert len(small.instructions) < len(program.instructions)
    # Candidates kept their tokens, so the result is a valid subsequence of the original program.
    remaining = iter(program.instructions)
    assert all(any(insn == other for other in remaining) for insn in small.instructions)
    assert verification._fresh_run(small, CorruptStoreDevice)
