"""Fuzzing (issue 10): a bounded run of every ``braze.fuzz`` target -- a BrazeError or success, never
another exception, never a hang -- and the harness itself (``braze bench fuzz`` runs the same targets
for longer)."""

from __future__ import annotations

import re
import time

import pytest

from braze import cli, fuzz
from braze.isa.errors import BrazeError

#: Examples per target in the suite: deterministic (derandomized), a few seconds in all.
EXAMPLES = {"asm": 60, "disasm": 60, "config": 50, "onnx": 60, "model": 20, "session": 40}


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_target_never_crashes_or_hangs(name):
    fuzz.property_test(name, max_examples=EXAMPLES[name], timeout=20.0)()


def _target(run):
    from hypothesis import strategies as st

    return fuzz.Target("fake", "a stand-in", lambda: st.just(0), run)


def test_check_tells_errors_from_crashes_and_hangs():
    def user_error(case):
        raise BrazeError("bad input")

    def bug(case):
        {}["missing"]

    def wrong_result(case):
        raise AssertionError("disassembly differs")

    assert fuzz.check(_target(lambda case: None), 0).kind == fuzz.OK
    assert fuzz.check(_target(user_error), 0) == fuzz.Outcome(fuzz.ERROR, "bad input")
    crash = fuzz.check(_target(bug), 0)
    assert crash.kind == fuzz.CRASH and crash.detail.startswith("KeyError at test_fuzz.py:")
    assert fuzz.check(_target(wrong_result), 0).kind == fuzz.CRASH
    started = time.monotonic()
    hang = fuzz.check(_target(lambda case: time.sleep(30)), 0, timeout=0.2)
    assert hang.kind == fuzz.HANG and time.monotonic() - started < 5


def test_a_failing_property_test_fails(monkeypatch):
    monkeypatch.setitem(fuzz.TARGETS, "fake", _target(lambda case: [][1]))
    with pytest.raises(AssertionError, match="fake: crash: IndexError"):
        fuzz.property_test("fake", max_examples=1)()


def test_bench_fuzz_reports_a_table_and_one_summary_line(capsys):
    assert cli.main(["bench", "fuzz", "--minutes", "0.02", "--targets", "config,disasm", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("target"))
    rows = {line.split()[0]: line.split() for line in lines[header + 1:header + 3]}
    assert set(rows) == {"config", "disasm"}
    match = re.fullmatch(r"fuzz: cases=(\d+) crashes=(\d+) hangs=(\d+)", lines[-1])
    assert match and int(match[1]) == sum(int(row[1]) for row in rows.values()) > 0
    assert cli.main(["bench", "fuzz", "--targets", "nope"]) == 2
    assert "unknown target" in capsys.readouterr().err
