"""The race detector against a brute-force happens-before oracle on random programs.

The model's detector is incremental (vector clocks and shadow arrays); the
oracle here builds the whole happens-before relation of a program (unit
program order, k-th push before k-th pop, barriers) by transitive closure
and checks every pair of instructions, so the two share no code.
"""

import random

import pytest

from braze.isa import Config, ErrorCause
from braze.isa import Instruction as I
from braze.isa.model import Machine, RaceError

TINY = Config.preset("tiny")                 # rows = cols = 4, token_depth 4
DATA = 0x1000                                # external data; the program sits below it
UNIT_OF = {"load": 0, "store": 2, "matmul": 1, "epilogue": 1, "vector": 1, "config": 1,
           "fence": None, "counters": None, "halt": None}
BINARY = {"add", "sub", "mul", "max", "min"}
# Token queues as (producer, consumer) unit numbers; load 0, compute 1, store 2.
POPS = {"pop_prev": lambda u: (u - 1, u), "pop_next": lambda u: (u + 1, u)}
PUSHES = {"push_prev": lambda u: (u, u - 1), "push_next": lambda u: (u, u + 1)}
ALLOWED = {0: ("pop_next", "push_next"), 1: ("pop_prev", "pop_next", "push_prev", "push_next"),
           2: ("pop_prev", "push_prev")}


def rows(first, count):
    return set(range(first, first + count))


def dram_bytes(start, count, stride, row_bytes):
    return {start + r * stride + b for r in range(count) for b in range(row_bytes)}


def footprint(insn):
    """(reads, writes) as sets of (space, location), straight from the ISA text."""
    op = insn.format.mnemonic
    reads, writes = set(), set()

    def add(target, space, locations):
        target.update((space, x) for x in locations)

    if op in ("load", "store"):
        local = rows(insn.addr, insn.rows)
        row_bytes = insn.len * (1 if insn.mem.name == "SPAD" else 4)
        external = dram_bytes(insn.dram, insn.rows, insn.stride, row_bytes)
        if op == "load":
            add(writes, insn.mem.name, local)
            if not insn.zero:
                add(reads, "DRAM", external)
        else:
            add(reads, insn.mem.name, local)
            add(writes, "DRAM", external)
    elif op == "matmul":
        chunks = -(-insn.k // TINY.rows)
        add(reads, "SPAD", {insn.a + c * insn.a_stride + i for c in range(chunks) for i in range(insn.m)})
        add(reads, "SPAD", rows(insn.b, insn.k))
        add(reads, "ACC", rows(insn.acc, insn.m))
        add(writes, "ACC", rows(insn.acc, insn.m))
    elif op == "epilogue":
        add(reads, "ACC", rows(insn.src, insn.m))
        if insn.bias:
            add(reads, "ACC", {insn.bias_addr})
        if insn.requant:
            add(reads, "ACC", {insn.quant_addr, insn.quant_addr + 1})
        if insn.residual:
            add(reads, "SPAD", rows(insn.res_addr, insn.m))
        add(writes, insn.out.name, rows(insn.dst, insn.m))
    elif op == "vector":
        add(reads, insn.src1_mem.name, rows(insn.src1, insn.rows))
        if insn.op.name.lower() in BINARY and not insn.use_imm:
            add(reads, insn.src2_mem.name, rows(insn.src2, insn.rows))
        add(writes, insn.dst_mem.name, rows(insn.dst, insn.rows))
    return reads, writes


def random_program(rng: random.Random, length: int) -> list[I]:
    """Random in-range instructions on a few rows, with tokens valid in program order."""
    tokens = {}
    program = []
    small = lambda hi=10: rng.randrange(hi)            # noqa: E731 -- addresses collide often
    while len(program) < length:
        kind = rng.choices(["load", "store", "matmul", "epilogue", "vector", "config", "fence", "counters"],
                           [6, 6, 4, 4, 4, 1, 1, 1])[0]
        mem = rng.choice(["spad", "acc"])
        if kind == "load":
            fields = dict(mem=mem, zero=rng.random() < 0.2, addr=small(), rows=rng.randint(1, 3),
                          len=rng.randint(1, 4), dram=DATA + small(24), stride=rng.randrange(9))
        elif kind == "store":
            fields = dict(mem=mem, addr=small(), rows=rng.randint(1, 3), len=rng.randint(1, 4),
                          dram=DATA + small(24), stride=rng.randrange(9))
        elif kind == "matmul":
            fields = dict(acc=small(), a=small(), b=small(), a_stride=rng.randrange(4), m=rng.randint(1, 3),
                          n=rng.randint(1, 4), k=rng.randint(1, 7), accumulate=rng.random() < 0.5)
        elif kind == "epilogue":
            fields = dict(src=small(), m=rng.randint(1, 3), n=rng.randint(1, 4), dst=small(), out=mem,
                          bias=rng.random() < 0.5, bias_addr=small(), requant=rng.random() < 0.5,
                          quant_addr=small(), residual=rng.random() < 0.5, res_addr=small())
        elif kind == "vector":
            fields = dict(op=rng.choice(["add", "sub", "mul", "max", "min", "shr", "clip", "mov"]),
                          dst_mem=mem, src1_mem=rng.choice(["spad", "acc"]),
                          src2_mem=rng.choice(["spad", "acc"]), use_imm=rng.random() < 0.3, dst=small(),
                          src1=small(), src2=small(), rows=rng.randint(1, 3))
        elif kind == "config":
            fields = dict(reg="clip_hi", value=rng.randrange(100))
        elif kind == "counters":
            fields = dict(dram=0x8000)
        else:
            fields = {}
        unit = UNIT_OF[kind]
        if unit is not None:
            for flag in ALLOWED[unit]:
                if rng.random() < 0.3:
                    queue = (POPS | PUSHES)[flag](unit)
                    held = tokens.get(queue, 0)
                    if flag in POPS and held > 0:
                        tokens[queue] = held - 1
                        fields[flag] = True
                    elif flag in PUSHES and held < TINY.token_depth:
                        tokens[queue] = held + 1
                        fields[flag] = True
        insn = I.make(kind, **fields)
        if partly_overlaps(insn):
            for flag in insn.deps:                          # give the tokens back; draw again
                queue = (POPS | PUSHES)[flag](unit)
                tokens[queue] += 1 if flag in POPS else -1
            continue
        program.append(insn)
    return program


def partly_overlaps(insn):
    """EPILOGUE/VECTOR whose source rows partly overlap the destination (an OVERLAP error, not a race)."""
    op = insn.format.mnemonic
    if op == "epilogue":
        sources = [(insn.src, "ACC")] + ([(insn.res_addr, "SPAD")] if insn.residual else [])
        dst_mem, count = insn.out.name, insn.m
    elif op == "vector":
        sources = [(insn.src1, insn.src1_mem.name)]
        if insn.op.name.lower() in BINARY and not insn.use_imm:
            sources.append((insn.src2, insn.src2_mem.name))
        dst_mem, count = insn.dst_mem.name, insn.rows
    else:
        return False
    return any(mem == dst_mem and first != insn.dst and abs(first - insn.dst) < count
               for first, mem in sources)


def happens_before(program: list[I]) -> list[int]:
    """``before[j]``: bit set of every i < j that happens before j."""
    before: list[int] = []
    last_on_unit: dict[int, int] = {}
    pushers: dict[tuple[int, int], list[int]] = {}
    popped: dict[tuple[int, int], int] = {}
    last_barrier = None
    for j, insn in enumerate(program):
        unit = UNIT_OF[insn.format.mnemonic]
        direct = []
        if unit is None:                                   # a barrier follows everything before it
            mask = (1 << j) - 1
        else:
            if last_barrier is not None:
                direct.append(last_barrier)
            if unit in last_on_unit:
                direct.append(last_on_unit[unit])
            for flag in insn.deps & POPS.keys():
                queue = POPS[flag](unit)
                count = popped.get(queue, 0)
                direct.append(pushers[queue][count])
                popped[queue] = count + 1
            mask = 0
            for i in direct:
                mask |= before[i] | (1 << i)
            last_on_unit[unit] = j
            for flag in insn.deps & PUSHES.keys():
                pushers.setdefault(PUSHES[flag](unit), []).append(j)
        if unit is None:
            last_barrier = j
        before.append(mask)
    return before


def racing_pairs(program: list[I]) -> set[tuple[int, int]]:
    before = happens_before(program)
    prints = [footprint(insn) for insn in program]
    pairs = set()
    for j, insn in enumerate(program):
        for i in range(j):
            unit_i, unit_j = UNIT_OF[program[i].format.mnemonic], UNIT_OF[insn.format.mnemonic]
            if unit_i is None or unit_j is None or unit_i == unit_j or before[j] >> i & 1:
                continue
            (reads_i, writes_i), (reads_j, writes_j) = prints[i], prints[j]
            if writes_i & (reads_j | writes_j) or reads_i & writes_j:
                pairs.add((i, j))
    return pairs


def run_and_classify(seed: int):
    rng = random.Random(seed)
    program = random_program(rng, rng.randint(2, 14)) + [I.make("halt")]
    pairs = racing_pairs(program)
    machine = Machine(TINY)
    if not pairs:
        machine.run_program(program)
        return program, pairs, None
    with pytest.raises(RaceError) as info:
        machine.run_program(program)
    return program, pairs, info.value


def test_detector_agrees_with_brute_force_oracle():
    outcomes = {"race": 0, "clean": 0}
    for seed in range(300):
        program, pairs, error = run_and_classify(seed)
        if error is None:
            outcomes["clean"] += 1
            continue
        outcomes["race"] += 1
        # The model stops at the first instruction that races with an earlier one, and names a partner
        # it really races with.
        first = min(j for _, j in pairs)
        assert error.cause is ErrorCause.RACE
        assert error.pc == 16 * first, (seed, program)
        assert (error.other_pc // 16, first) in pairs, (seed, program)
    # Both outcomes occur often enough for the comparison to mean something.
    assert outcomes["race"] > 60 and outcomes["clean"] > 60, outcomes
