"""Invariants of the decoupled-machine schedule on random programs with random tokens.

Each check restates a rule of the machine (in-order units, queue depth,
tokens, barriers) directly on the schedule's start/end cycles.
"""

import random

import pytest

from braze.isa import Config, Unit
from braze.isa import Instruction as I
from braze.isa.model import Machine
from braze.isa.timing import instruction_cycles, schedule

# Shallow queues so that dispatch and token back-pressure happen often.
CONFIG = Config.preset("tiny").replace(name="shallow", queue_depth=2, token_depth=2)
POP_QUEUE = {"pop_prev": lambda u: (u - 1, u), "pop_next": lambda u: (u + 1, u)}
PUSH_QUEUE = {"push_prev": lambda u: (u, u - 1), "push_next": lambda u: (u, u + 1)}
FLAGS = {0: ("pop_next", "push_next"), 1: ("pop_prev", "pop_next", "push_prev", "push_next"),
         2: ("pop_prev", "push_prev")}
BARRIERS = {"fence", "counters", "halt"}


def random_program(rng: random.Random, length: int) -> list[I]:
    """Independent tiles on distinct rows (no races), tokens valid in program order."""
    held = {}
    program = []
    for index in range(length):
        kind = rng.choices(["load", "store", "matmul", "epilogue", "vector", "config", "fence"],
                           [5, 4, 3, 2, 2, 1, 1])[0]
        row = 6 * index                  # each instruction has rows of its own: no races
        if kind == "load":
            fields = dict(mem="spad", zero=rng.random() < 0.2, addr=row, rows=rng.randint(1, 6), len=4,
                          dram=0x1000 + rng.randrange(64), stride=rng.choice([4, 5, 16]))
        elif kind == "store":
            fields = dict(mem=rng.choice(["spad", "acc"]), addr=row, rows=rng.randint(1, 6),
                          len=rng.randint(1, 4), dram=0x4000 + 256 * index, stride=16)
        elif kind == "matmul":
            fields = dict(acc=row, a=row, b=row + 512, a_stride=2, m=2, n=4, k=rng.randint(1, 12))
        elif kind == "epilogue":
            fields = dict(src=row, m=rng.randint(1, 5), n=4, dst=row)
        elif kind == "vector":
            fields = dict(op=rng.choice(["add", "mov"]), dst_mem="spad", src1_mem="spad",
                          src2_mem=rng.choice(["spad", "acc"]), dst=row, src1=row, src2=row,
                          rows=rng.randint(1, 5))
        elif kind == "config":
            fields = dict(reg="clip_lo", value=1)
        else:
            fields = {}
        unit = I.make(kind, **fields).unit.value
        for flag in FLAGS.get(unit, ()):
            if rng.random() < 0.35:
                queue = (POP_QUEUE | PUSH_QUEUE)[flag](unit)
                count = held.get(queue, 0)
                if flag in POP_QUEUE and count > 0:
                    held[queue], fields[flag] = count - 1, True
                elif flag in PUSH_QUEUE and count < CONFIG.token_depth:
                    held[queue], fields[flag] = count + 1, True
        program.append(I.make(kind, **fields))
    return program + [I.make("halt")]


@pytest.mark.parametrize("seed", range(40))
def test_schedule_invariants(seed):
    rng = random.Random(seed)
    program = random_program(rng, rng.randint(1, 40))
    sched = schedule(program, CONFIG)
    entries = sched.entries
    assert [e.insn for e in entries] == program

    previous_on_unit = {}
    waiting = {unit: [] for unit in (Unit.LOAD, Unit.COMPUTE, Unit.STORE)}
    pushes, pops = {}, {}
    last_dispatch = -1
    for index, entry in enumerate(entries):
        insn = entry.insn
        assert entry.end - entry.start == instruction_cycles(insn, CONFIG)
        assert entry.dispatch <= entry.start <= entry.end <= entry.retire
        # In-order dispatch, at most one instruction per cycle.
        assert entry.dispatch > last_dispatch
        last_dispatch = entry.dispatch
        if insn.format.mnemonic in BARRIERS:
            assert entry.unit is Unit.CONTROL
            assert entry.start == max([entry.dispatch] + [e.retire for e in entries[:index]])
            assert entry.stall_dep == entry.start - entry.dispatch          # waiting as a barrier
            assert all(e.dispatch >= entry.end for e in entries[index + 1:])
            continue
        unit = entry.unit
        # A unit runs its own instructions one after the other, in program order.
        ready = entry.dispatch
        if unit in previous_on_unit:
            ready = max(ready, previous_on_unit[unit].retire)
        assert entry.start >= ready
        # Queue depth: when this one enters its queue, fewer than queue_depth wait in it.
        queued = [e for e in waiting[unit] if e.start > entry.dispatch]
        assert len(queued) < CONFIG.queue_depth
        waiting[unit].append(entry)
        # The k-th pop of a token queue starts after the k-th push's instruction ended.
        for flag in insn.deps & POP_QUEUE.keys():
            queue = POP_QUEUE[flag](unit.value)
            k = pops.get(queue, 0)
            assert entry.start >= pushes[queue][k].end
            pops[queue] = k + 1
        for flag in insn.deps & PUSH_QUEUE.keys():
            pushes.setdefault(PUSH_QUEUE[flag](unit.value), []).append(entry)
        # Without tokens to wait for, nothing delays the start; the stall is exactly the waiting.
        if not insn.deps & POP_QUEUE.keys():
            assert entry.start == ready
        assert entry.stall_dep == (entry.start - ready) + (entry.retire - entry.end)
        previous_on_unit[unit] = entry

    assert sched.cycles == max(e.retire for e in entries) == entries[-1].end
    assert sched.stall_dep == sum(e.stall_dep for e in entries)
    for name, opcodes in {"load_busy": {"load"}, "store_busy": {"store"}, "array_busy": {"matmul"},
                          "vector_busy": {"epilogue", "vector"}}.items():
        cycles = [instruction_cycles(e.insn, CONFIG) for e in entries if e.insn.format.mnemonic in opcodes]
        assert sched.busy[name] == sum(cycles)

    # The reference model reports exactly this schedule (no COUNTERS reset here).
    result = Machine(CONFIG).run_program(program)
    assert result.cycles == result.counters["cycles"] == sched.cycles
    assert result.counters["stall_dep"] == sched.stall_dep
    for name, value in sched.busy.items():
        assert result.counters[name] == value
    assert [(e.start, e.end) for e in result.timeline] == [(e.start, e.end) for e in entries]


def test_token_capacity_is_never_exceeded():
    """At no cycle does a token queue hold more than token_depth tokens (push at retire, pop at start)."""
    checked = 0
    for seed in range(40):
        rng = random.Random(1000 + seed)
        program = random_program(rng, 40)
        entries = schedule(program, CONFIG).entries
        events = {}
        for entry in entries:
            unit = entry.unit.value
            for flag in entry.insn.deps & PUSH_QUEUE.keys():
                events.setdefault(PUSH_QUEUE[flag](unit), []).append((entry.retire, 1))
            for flag in entry.insn.deps & POP_QUEUE.keys():
                events.setdefault(POP_QUEUE[flag](unit), []).append((entry.start, -1))
        for queue_events in events.values():
            level = 0
            # A pop in the same cycle as a push frees its slot first.
            for _, delta in sorted(queue_events):
                level += delta
                assert level <= CONFIG.token_depth
                checked += 1
    assert checked > 100
