"""The planned path of the reference model against its instruction-by-instruction path.

``Machine.run`` compiles a program once into a plan (decoding, checks, schedule, counters, race
verdict) and replays the plan's data movement on later runs of the same program bytes.  These
tests run random programs -- valid ones, and ones that fail every way the model can fail, that
race, deadlock, run out of instructions or write over their own code -- on a planned machine
(cold, then warm) and on ``Machine(fast=False)``, and require identical results: every byte of
memory, the on-chip memories, configuration registers, counters, the run's result, and every
error's type, cause, pc and message.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest

from braze.isa import SNAPSHOT_BYTES, Config, ConfigReg, ErrorCause, IllegalInstruction, encode_program
from braze.isa import Instruction as I
from braze.isa.encoding import _decode_checked, decode
from braze.isa.model import Machine, RaceError
from braze.sim.progen import generate

TINY = Config.preset("tiny")                     # 1 MiB external memory, 1024 spad / 256 acc rows of 4
SMALL_DEFAULT = Config.preset("default").replace(name="small_default", dram_bytes=1 << 20)
DATA = 0x4000                                    # data the programs read and write
PROGRAM = 0x1000                                 # where most programs sit
FAR = 0x40000                                    # where long programs sit


# Running both paths ----------------------------------------------------------------------------------------

def _machines(config: Config, seed: int) -> tuple[Machine, Machine]:
    """A planned and a reference machine with the same (random) memories and registers."""
    rng = np.random.default_rng(seed)
    dram = rng.integers(0, 256, size=0x8000, dtype=np.uint8)
    spad = rng.integers(-128, 128, size=(config.spad_rows, config.cols), dtype=np.int8)
    acc = rng.integers(-(1 << 31), 1 << 31, size=(config.acc_rows, config.cols), dtype=np.int64)
    regs = {reg: int(rng.integers(-300, 300)) for reg in ConfigReg}
    machines = Machine(config), Machine(config, fast=False)
    for machine in machines:
        machine.write_dram(0, dram)
        machine.spad[:] = spad
        machine.acc[:] = acc.astype(np.int32)
        machine.config_regs.update(regs)
    return machines


def _outcome(machine: Machine, base: int, limit: int | None):
    """What a run reports (result or error) and the machine state after it."""
    try:
        result = machine.run(base, max_instructions=limit)
        report = ("done", result.status, result.counters, result.instructions, result.cycles, result.halt_pc,
                  [(e.index, e.insn, e.unit, e.dispatch, e.start, e.end, e.retire, e.stall_dep, e.pc)
                   for e in result.timeline])
    except Exception as error:
        details = ("cause", "pc", "other_pc", "word", "limit")
        report = ("error", type(error), str(error), *(getattr(error, name, None) for name in details))
    return report


def _state(machine: Machine):
    return (machine.dram.tobytes(), machine.spad.tobytes(), machine.acc.tobytes(), machine.counters.tolist(),
            dict(machine.config_regs), list(machine.scalar_regs))


def _assert_same(planned: Machine, reference: Machine, base: int, limit: int | None = None, *, runs: int = 2):
    """Run the program at ``base`` ``runs`` times on both machines; everything must match each time."""
    reports = []
    for run in range(runs):
        want = _outcome(reference, base, limit)
        have = _outcome(planned, base, limit)
        assert have == want, f"run {run}: planned {have[:3]} != reference {want[:3]}"
        assert _state(planned) == _state(reference), f"run {run}: machine state differs"
        reports.append(want)
    return reports


# Random programs that go wrong in every way ----------------------------------------------------------------

_UNITS = {"load": 0, "store": 2, "matmul": 1, "epilogue": 1, "vector": 1, "config": 1}
_FLAGS = {0: ("pop_next", "push_next"), 1: ("pop_prev", "pop_next", "push_prev", "push_next"),
          2: ("pop_prev", "push_prev")}
_QUEUE = {"pop_prev": lambda u: (u - 1, u), "pop_next": lambda u: (u + 1, u),
          "push_prev": lambda u: (u, u - 1), "push_next": lambda u: (u, u + 1)}


def _random_instruction(rng: random.Random, config: Config, base: int, length: int, tame: bool,
                        tokens: dict) -> I:
    """Any instruction on a few colliding rows; unless ``tame``, with tokens that may not match and
    addresses that may be out of range or over the program."""
    rows_limit = {"spad": config.spad_rows, "acc": config.acc_rows}
    cols = config.cols
    wild = 0.0 if tame else 1.0

    def row(mem, count=1):
        # Mostly a few rows that collide; sometimes the very end of the memory (range errors).
        if rng.random() < 0.05 * wild:
            return rows_limit[mem] - rng.randint(0, count)
        return rng.randrange(12)

    def dram():
        choice = rng.random() * (1 + 9 * (1 - wild))
        if choice < 0.04:
            return config.dram_bytes - rng.randrange(1, 64)              # DRAM_RANGE
        if choice < 0.10:
            return base + 16 * rng.randrange(length + 1) + rng.choice([0, 0, 3])   # over the program
        return DATA + rng.randrange(96)

    kind = rng.choices(["load", "store", "matmul", "epilogue", "vector", "config", "fence", "counters"],
                       [8, 6, 4, 4, 4, 1, 1, 1])[0]
    mem = rng.choice(["spad", "acc"])
    width = lambda: rng.randint(1, cols + (1 if rng.random() < 0.03 * wild else 0))  # noqa: E731 -- TILE_RANGE
    if kind == "load":
        fields = dict(mem=mem, zero=rng.random() < 0.15, addr=row(mem, 3), rows=rng.randint(1, 4),
                      len=width(), dram=dram(), stride=rng.choice([0, 1, 3, 4, 8, 16, 17, 4 * cols]))
    elif kind == "store":
        fields = dict(mem=mem, addr=row(mem, 3), rows=rng.randint(1, 4), len=width(), dram=dram(),
                      stride=rng.choice([0, 1, 3, 4, 8, 16, 17, 4 * cols]))
    elif kind == "matmul":
        fields = dict(acc=row("acc", 3), a=row("spad"), b=row("spad"), a_stride=rng.randrange(6),
                      m=rng.randint(1, 4), n=width(), k=rng.randint(1, 3 * config.rows + 1),
                      accumulate=rng.random() < 0.5)
    elif kind == "epilogue":
        fields = dict(src=row("acc", 3), m=rng.randint(1, 4), n=width(), dst=row(mem, 3), out=mem,
                      bias=rng.random() < 0.5, bias_addr=row("acc"), requant=rng.random() < 0.5,
                      quant_addr=row("acc"), residual=rng.random() < 0.4, res_addr=row("spad"),
                      act=rng.choice(["none", "relu", "clip"]))
    elif kind == "vector":
        fields = dict(op=rng.choice(["add", "sub", "mul", "max", "min", "shr", "clip", "mov"]), dst_mem=mem,
                      src1_mem=rng.choice(["spad", "acc"]), src2_mem=rng.choice(["spad", "acc"]),
                      use_imm=rng.random() < 0.3, dst=row(mem, 3), src1=row("spad"), src2=row("spad"),
                      rows=rng.randint(1, 4), imm=rng.randint(-300, 300), shift=rng.randrange(8))
    elif kind == "config":
        fields = dict(reg=rng.choice(["clip_lo", "clip_hi", "out_zp"]), value=rng.randint(-200, 200))
    elif kind == "counters":
        fields = dict(dram=dram() if rng.random() < 0.3 else DATA + 0x400, reset=rng.random() < 0.5)
    else:
        fields = {}
    if kind in _UNITS and not tame:
        for flag in _FLAGS[_UNITS[kind]]:
            queue = _QUEUE[flag](_UNITS[kind])
            held = tokens.get(queue, 0)
            # Tokens as program order allows them, and now and then one it does not (a DEADLOCK).
            if rng.random() < 0.3 and (rng.random() < 0.03 or (
                    held > 0 if flag.startswith("pop") else held < config.token_depth)):
                fields[flag] = True
                tokens[queue] = held + (-1 if flag.startswith("pop") else 1)
    try:
        return I.make(kind, **fields)
    except ValueError:                           # a field outside its encoding (len=cols+1 on 64 cols)
        return I.make("fence")


def _random_program(rng: random.Random, config: Config, base: int) -> bytes:
    """Up to 24 random instructions; a third of the programs are tame: a FENCE after every
    instruction that could race (no tokens), every address in range."""
    length = rng.randint(1, 24)
    tame = rng.random() < 0.33
    words = []
    tokens: dict = {}
    for _ in range(length):
        insn = _random_instruction(rng, config, base, length, tame, tokens)
        words.append(insn.to_bytes())
        if tame and insn.format.mnemonic != "config":
            words.append(I.make("fence").to_bytes())
    if rng.random() < 0.9:
        words.append(I.make("halt").to_bytes())
    for _ in range(0 if tame else rng.choice([0, 0, 0, 1])):             # an illegal or odd word
        word = rng.getrandbits(128) if rng.random() < 0.5 else int.from_bytes(words[0], "little") | (
            1 << rng.randrange(8, 128))
        words.insert(rng.randrange(len(words) + 1), word.to_bytes(16, "little"))
    return b"".join(words)


@pytest.mark.parametrize("config", [TINY, SMALL_DEFAULT], ids=lambda c: c.name)
@pytest.mark.parametrize("race_check", [True, False])
def test_random_programs_match_the_reference(config, race_check):
    outcomes = {}
    for seed in range(150):
        rng = random.Random(seed)
        planned, reference = _machines(config, seed)
        planned.race_check = reference.race_check = race_check
        base = rng.choice([PROGRAM, PROGRAM, PROGRAM, 0, config.dram_bytes - 16 * rng.randint(1, 8)])
        program = _random_program(rng, config, base)[:config.dram_bytes - base]
        for machine in (planned, reference):
            machine.write_dram(base, program)
        limit = rng.choice([None, None, None, rng.randint(0, 12)])
        if limit is None:
            limit = 5000             # a random word may be a BRANCH that loops for ever
        report = _assert_same(planned, reference, base, limit)[0]
        kind = report[0] if report[0] == "done" else getattr(report[3], "name", report[1].__name__)
        outcomes[kind] = outcomes.get(kind, 0) + 1
    # The programs fail in many ways (and often enough not at all) for the comparison to mean something.
    assert outcomes.get("done", 0) > 10, outcomes
    if race_check:
        assert outcomes.get("RACE", 0) > 10, outcomes
    for kind in ("DEADLOCK", "ILLEGAL_OPCODE", "InstructionLimitExceeded"):
        assert outcomes.get(kind, 0) > 0, outcomes
    assert len(outcomes) >= 8, outcomes


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_generated_programs_match_the_reference(preset):
    config = Config.preset(preset)
    for seed in range(12 if preset == "large" else 25):
        program = generate(config, seed, size=4 + seed % 5)
        planned, reference = Machine(config), Machine(config, fast=False)
        for machine in (planned, reference):
            for addr, blob in program.image:
                machine.write_dram(addr, blob)
        reports = _assert_same(planned, reference, program.base, runs=3)
        assert reports[0][0] == "done"


# Plans and their invalidation -------------------------------------------------------------------------------

def _load_store(**overrides):
    return [I.make("load", mem="spad", addr=0, rows=2, len=4, dram=DATA, stride=4, push_next=True),
            I.make("vector", op="add", dst_mem="spad", src1_mem="spad", src2_mem="spad", dst=2, src1=0,
                   src2=1, rows=1, pop_prev=True, push_next=True),
            I.make("store", **({"mem": "spad", "addr": 2, "rows": 1, "len": 4, "dram": DATA + 0x100,
                                "stride": 0, "pop_prev": True} | overrides)),
            I.make("halt")]


def test_a_second_run_replays_the_plan_and_reads_new_data():
    machine = Machine(TINY)
    machine.write_dram(DATA, bytes([1, 2, 3, 4, 10, 20, 30, 40]))
    first = machine.run_program(_load_store(), base=PROGRAM)
    assert machine.read_dram(DATA + 0x100, 4) == bytes([11, 22, 33, 44])
    assert len(machine._plans[PROGRAM]) == 1
    machine.write_dram(DATA, bytes([5, 5, 5, 5, 1, 1, 1, 1]))
    second = machine.run(PROGRAM)
    assert machine.read_dram(DATA + 0x100, 4) == bytes([6, 6, 6, 6])
    assert second == first and len(machine._plans[PROGRAM]) == 1


def test_new_program_bytes_at_the_same_base_are_compiled_afresh():
    planned, reference = _machines(TINY, 1)
    for program in (_load_store(), _load_store(dram=DATA + 0x200), _load_store()[:2] + [I.make("halt")],
                    _load_store()):
        for machine in (planned, reference):
            machine.write_dram(PROGRAM, encode_program(program))
        _assert_same(planned, reference, PROGRAM)
    # The second and the third program differ from the first only in one word each: three plans.
    assert len(planned._plans[PROGRAM]) == 3


def test_a_program_that_stores_over_its_next_instruction():
    # Scratchpad rows 0..3 hold the word of a HALT; the STORE writes it over the instruction after
    # the next, so the VECTOR there never runs.  The reference fetches after every store: so must the plan.
    halt = np.frombuffer(I.make("halt").to_bytes(), dtype=np.int8).reshape(4, 4)
    program = [I.make("store", mem="spad", addr=0, rows=4, len=4, dram=PROGRAM + 32, stride=4),
               I.make("fence"),
               I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=9, src1=8, rows=1),
               I.make("halt")]
    planned, reference = _machines(TINY, 2)
    for machine in (planned, reference):
        machine.spad[0:4] = halt
        machine.write_dram(PROGRAM, encode_program(program))
    reports = _assert_same(planned, reference, PROGRAM, runs=3)
    assert reports[0][0] == "done" and reports[0][3] == 3 and reports[0][2]["insn_vector"] == 0
    assert not planned._plans.get(PROGRAM)


def test_a_program_that_stores_over_a_later_instruction_after_an_error():
    # The store makes the next word illegal (spad rows of zeros): an ILLEGAL_OPCODE the initial bytes
    # do not show.
    program = [I.make("store", mem="spad", addr=0, rows=1, len=4, dram=PROGRAM + 16, stride=0),
               I.make("fence"), I.make("halt")]
    planned, reference = _machines(TINY, 3)
    for machine in (planned, reference):
        machine.spad[0] = 0
        machine.write_dram(PROGRAM, encode_program(program))
    reports = _assert_same(planned, reference, PROGRAM)
    assert reports[0][3] is ErrorCause.ILLEGAL_OPCODE and reports[0][4] == PROGRAM + 16


def test_a_program_that_rewrites_its_own_past_is_planned_per_version():
    # COUNTERS snapshots over the instructions before it (already fetched): the next run sees other bytes.
    fences = SNAPSHOT_BYTES // 16 + 1
    program = [I.make("fence")] * fences + [I.make("counters", dram=PROGRAM), I.make("halt")]
    planned, reference = _machines(TINY, 4)
    for machine in (planned, reference):
        machine.write_dram(PROGRAM, encode_program(program))
    # The snapshot's words may decode as a BRANCH that loops: an instruction limit bounds the runs.
    reports = _assert_same(planned, reference, PROGRAM, 1000, runs=3)
    assert reports[0][0] == "done" and reports[1] != reports[0]
    assert planned._plans[PROGRAM][-1].instructions == fences + 2


def test_counters_snapshot_into_the_program_ahead_falls_back():
    program = [I.make("counters", dram=PROGRAM + 16)] + [I.make("fence")] * 40 + [I.make("halt")]
    planned, reference = _machines(TINY, 5)
    for machine in (planned, reference):
        machine.write_dram(PROGRAM, encode_program(program))
    _assert_same(planned, reference, PROGRAM)


def test_replaced_memories_and_registers_are_not_used_through_an_old_plan():
    machine = Machine(TINY)
    machine.write_dram(DATA, bytes(range(8)))
    machine.run_program(_load_store(), base=PROGRAM)
    old_dram = machine.dram
    machine.dram = old_dram.copy()
    machine.write_dram(DATA, bytes([7] * 8))
    machine.run(PROGRAM)
    assert machine.read_dram(DATA + 0x100, 4) == bytes([14] * 4)
    assert old_dram[DATA + 0x100] != 14
    machine.spad = machine.spad.copy()
    machine.config_regs = dict(machine.config_regs)
    machine.run(PROGRAM)
    assert (machine.spad[2] == 14).all()


def test_race_check_can_be_switched_between_runs():
    racy = [I.make("load", mem="spad", addr=0, rows=1, len=4, dram=DATA),
            I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=1, src1=0, rows=1),
            I.make("halt")]
    machine = Machine(TINY)
    machine.write_dram(PROGRAM, encode_program(racy))
    for check in (True, False, True, False):
        machine.race_check = check
        if check:
            with pytest.raises(RaceError) as info:
                machine.run(PROGRAM)
            assert (info.value.pc, info.value.other_pc) == (PROGRAM + 16, PROGRAM)
        else:
            assert machine.run(PROGRAM).instructions == 3


def test_instruction_limits_below_and_above_a_plan():
    program = [I.make("fence")] * 5 + [I.make("halt")]
    planned, reference = _machines(TINY, 6)
    for machine in (planned, reference):
        machine.write_dram(PROGRAM, encode_program(program))
    for limit in (None, 7, 6, 5, 1, 0, -1, None, 6):
        _assert_same(planned, reference, PROGRAM, limit, runs=1)


def test_errors_are_raised_afresh_each_run():
    machine = Machine(TINY)
    machine.write_dram(PROGRAM, encode_program([I.make("matmul", acc=0, a=0, b=0, a_stride=1, m=1, n=4, k=4,
                                                       pop_prev=True), I.make("halt")]))
    errors = []
    for _ in range(2):
        with pytest.raises(Exception) as info:
            machine.run(PROGRAM)
        errors.append(info.value)
    assert errors[0] is not errors[1]
    assert [(e.cause, e.pc, str(e)) for e in errors] == [(ErrorCause.DEADLOCK, PROGRAM, str(errors[0]))] * 2


def test_subclasses_that_change_the_executor_run_instruction_by_instruction():
    calls = []

    class Watching(Machine):
        def _exec_store(self, insn, entry):
            calls.append(entry.pc)
            super()._exec_store(insn, entry)

    machine = Watching(TINY)
    machine.run_program(_load_store(), base=PROGRAM)
    machine.run(PROGRAM)
    assert calls == [PROGRAM + 32] * 2 and not machine._plans


def test_unaligned_base_and_fetch_past_the_end():
    planned, reference = _machines(TINY, 7)
    for base in (PROGRAM + 4, TINY.dram_bytes - 16):
        for machine in (planned, reference):
            machine.write_dram(TINY.dram_bytes - 16, I.make("fence").to_bytes())
        _assert_same(planned, reference, base)


def test_counter_snapshots_of_a_replayed_plan():
    program = [I.make("load", mem="acc", addr=0, rows=3, len=4, dram=DATA, stride=20, push_next=True),
               I.make("matmul", acc=4, a=0, b=0, a_stride=1, m=2, n=4, k=6, pop_prev=True),
               I.make("counters", dram=DATA + 0x400, reset=True),
               I.make("epilogue", src=4, m=2, n=4, dst=0, out="spad", act="relu", push_next=True),
               I.make("store", mem="spad", addr=0, rows=2, len=4, dram=DATA + 0x300, stride=9, pop_prev=True),
               I.make("counters", dram=DATA + 0x400 + SNAPSHOT_BYTES),
               I.make("halt")]
    planned, reference = _machines(TINY, 8)
    for machine in (planned, reference):
        machine.write_dram(PROGRAM, encode_program(program))
    _assert_same(planned, reference, PROGRAM, runs=3)


# Decoding ---------------------------------------------------------------------------------------------------

def test_decode_tables_agree_with_the_field_by_field_decoder():
    rng = random.Random(0)
    legal = 0
    for _ in range(20000):
        # Legal words, legal words with a bit flipped, and random words of any width.
        if rng.random() < 0.5:
            word = int.from_bytes(_random_instruction(rng, TINY, 0, 1, False, {}).to_bytes(), "little")
            if rng.random() < 0.5:
                word ^= 1 << rng.randrange(128)
        else:
            word = rng.getrandbits(rng.choice([8, 24, 48, 80, 128]))
            word = (word & ~0xF) | rng.randrange(16)
        try:
            want = _decode_checked(word, pc=0x40)
        except IllegalInstruction as error:
            with pytest.raises(IllegalInstruction) as info:
                decode(word, pc=0x40)
            assert (info.value.cause, info.value.pc, info.value.word, str(info.value)) == \
                (error.cause, error.pc, error.word, str(error))
            continue
        legal += 1
        assert decode(word, pc=0x40) == want
        assert decode(word) == want                        # from the cache
        assert want.encode() == word
    assert legal > 5000
    for word in (-1, 1 << 128, True):
        with pytest.raises((IllegalInstruction, TypeError)):
            _decode_checked(word)
        with pytest.raises((IllegalInstruction, TypeError)):
            decode(word)


# Long programs: the race detector's lists, blocks and shadow arrays ----------------------------------------

def _streams(ending: list[I], loads: int = 2500) -> list[I]:
    """The load unit runs ``loads`` LOADs ahead of everything, never synchronised; the compute and store
    units work on other rows and bytes meanwhile (no race), then ``ending`` runs."""
    program = []
    for i in range(loads):
        program.append(I.make("load", mem="spad", addr=i % 900, rows=1 + i % 2, len=4,
                              dram=DATA + (i % 50) * 8, stride=4 + 8 * (i % 3)))
        if i % 10 == 9:
            program.append(I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=950 + i % 20,
                                  src1=1000, rows=1))
        if i % 40 == 39:
            program.append(I.make("matmul", acc=i % 7, a=930, b=1000, a_stride=7, m=2, n=4, k=9))
            program.append(I.make("store", mem="spad", addr=980 + i % 10, rows=2, len=4,
                                  dram=0x8000 + (i % 13) * 16, stride=5))
    return program + ending + [I.make("halt")]


@pytest.mark.parametrize("ending", [
    [],                                                                           # no race at all
    [I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=960, src1=5, rows=1)],  # spad, flushed
    [I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=960, src1=899, rows=1)],  # spad, recent
    [I.make("store", mem="spad", addr=990, rows=3, len=4, dram=DATA + 17, stride=40)],  # strided external
    [I.make("matmul", acc=20, a=600, b=1000, a_stride=150, m=2, n=4, k=9)],          # strided A rows
    [I.make("matmul", acc=20, a=902, b=1000, a_stride=40, m=2, n=4, k=9)],           # strided, no race
    [I.make("fence"), I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=960, src1=5, rows=1)],
], ids=["clean", "flushed", "recent", "external", "strided", "strided-clean", "fenced"])
def test_long_unsynchronised_streams(ending):
    planned, reference = _machines(TINY, 9)
    program = encode_program(_streams(ending))
    for machine in (planned, reference):
        machine.write_dram(FAR, program)
    report = _assert_same(planned, reference, FAR)[0]
    assert report[0] == "done" or report[3] is ErrorCause.RACE


@pytest.mark.slow
def test_long_generated_programs_with_a_token_dropped():
    # Valid long programs, and the same with one token pair removed: a race (or none) deep inside.
    rng = random.Random(5)
    for seed in range(6):
        program = generate(TINY, seed, size=120)
        variants = [list(program.instructions)]
        for _ in range(3):
            instructions = list(program.instructions)
            pushers = [i for i, insn in enumerate(instructions) if insn.deps & {"push_prev", "push_next"}]
            i = rng.choice(pushers)
            flag = sorted(instructions[i].deps & {"push_prev", "push_next"})[0]
            instructions[i] = instructions[i].replace(**{flag: False})
            # The matching pop: the next pop of the same queue (a DEADLOCK if left in place; drop it).
            unit, target = instructions[i].unit, flag
            pop = "pop_next" if target == "push_prev" else "pop_prev"
            for j in range(i + 1, len(instructions)):
                other = instructions[j]
                if pop in other.deps and other.unit is not unit and other.unit.name != "CONTROL":
                    order = ("LOAD", "COMPUTE", "STORE")
                    step = 1 if flag == "push_next" else -1
                    if order.index(other.unit.name) == order.index(unit.name) + step:
                        instructions[j] = other.replace(**{pop: False})
                        break
            variants.append(instructions)
        for instructions in variants:
            planned, reference = Machine(TINY), Machine(TINY, fast=False)
            for machine in (planned, reference):
                for addr, blob in program.image:
                    machine.write_dram(addr, blob)
                machine.write_dram(program.base, encode_program(instructions))
            _assert_same(planned, reference, program.base)


# The plans' epilogue arithmetic ---------------------------------------------------------------------------

def _pick(rng, shape, lo, hi):
    """Uniform values, with a fifth of them the corners of the range."""
    values = rng.integers(lo, hi, shape, endpoint=True)
    corner = rng.random(shape) < 0.2
    values[corner] = rng.choice([lo, hi, 0, -1, 1, lo + 1, hi - 1], size=int(corner.sum()))
    return values


def test_plan_epilogue_is_the_arith_specification():
    from braze.isa import arith
    from braze.isa.encoding import Activation, Memory
    from braze.isa.model import _epilogue

    low, high = arith.INT32_MIN, arith.INT32_MAX
    for trial in range(1500):
        rng = np.random.default_rng(trial)
        m, n = int(rng.integers(1, 40)), int(rng.integers(1, 65))
        pick = functools.partial(_pick, rng)
        tile = pick((m, n), low, high).astype(np.int32)
        bias = pick(n, low, high).astype(np.int32) if rng.random() < 0.7 else None
        mult = shift = None
        if rng.random() < 0.8:
            mult = pick(n, low, high).astype(np.int32)
            shift = (pick(n, 0, 63) if rng.random() < 0.7 else pick(n, low, high)).astype(np.int32)
        residual = pick((m, n), -128, 127).astype(np.int8) if rng.random() < 0.5 else None
        act = [Activation.NONE, Activation.RELU, Activation.CLIP][trial % 3]
        out = [Memory.SPAD, Memory.ACC][trial // 3 % 2]
        out_zp, clip_lo, clip_hi = (int(v) for v in pick(3, low, high))
        want = arith.epilogue(tile, bias=bias, mult=mult, shift=shift, residual=residual, act=act, out=out,
                              out_zp=out_zp, clip_lo=clip_lo, clip_hi=clip_hi)
        have = _epilogue(tile, bias, mult, shift, residual, act, out, out_zp, clip_lo, clip_hi).T
        assert np.array_equal(want, have), trial


def test_runs_of_loads_are_copied_as_the_loads_would():
    # LOADs that continue a run (same shape, next rows, evenly spaced sources), and ones that nearly do.
    for seed in range(60):
        rng = random.Random(seed)
        config = rng.choice([TINY, SMALL_DEFAULT])
        program, previous = [], None
        for _ in range(rng.randint(1, 40)):
            if previous is not None and rng.random() < 0.75:
                fields = dict(previous)
                fields["addr"] += fields["rows"] + rng.choice([0, 0, 0, 0, 1, -1])
                step = fields.pop("step")
                fields["dram"] += step if rng.random() < 0.9 else rng.choice([1, -1, 64])
                fields["step"] = step
                if rng.random() < 0.1:
                    fields["len"] = max(1, fields["len"] - 1)
            else:
                mem = rng.choice(["spad", "acc"])
                fields = dict(mem=mem, addr=rng.randrange(40), rows=rng.randint(1, 6),
                              len=rng.randint(1, config.cols), dram=DATA + rng.randrange(512),
                              stride=rng.choice([0, 1, 3, 8, 4 * config.cols, 100]),
                              step=rng.choice([0, 1, 16, 300, 4 * config.cols]))
            if fields["addr"] < 0 or fields["dram"] < 0:
                continue
            previous = fields
            program.append(I.make("load", **{k: v for k, v in fields.items() if k != "step"}))
            if rng.random() < 0.05:
                zero = I.make("load", mem="spad", zero=True, addr=3, rows=2, len=1)
                program.append(rng.choice([I.make("fence"), zero]))
        program.append(I.make("halt"))
        planned, reference = _machines(config, seed)
        for machine in (planned, reference):
            machine.write_dram(PROGRAM, encode_program(program))
        _assert_same(planned, reference, PROGRAM)


@pytest.mark.parametrize("mem", ["spad", "acc"])
def test_stores_of_overlapping_rows(mem):
    planned, reference = _machines(TINY, 10)
    for rows in (2, 3, 7, 1000):
        for stride in (0, 1, 3, 4, 5, 15):
            for length in (1, 3, 4):
                row_bytes = length * (1 if mem == "spad" else 4)
                if stride >= row_bytes:
                    continue
                program = encode_program([I.make("store", mem=mem, addr=3, rows=min(rows, 200), len=length,
                                                 dram=DATA + 1, stride=stride), I.make("halt")])
                for machine in (planned, reference):
                    machine.write_dram(PROGRAM, program)
                _assert_same(planned, reference, PROGRAM)


def test_plans_are_forgotten_least_recently_used_first(monkeypatch):
    from braze.isa import model

    monkeypatch.setattr(model, "_PLANS_PER_BASE", 2)
    monkeypatch.setattr(model, "_PLAN_LIMIT", 4)
    monkeypatch.setattr(model, "_PLANNED_INSTRUCTIONS_LIMIT", 40)
    planned, reference = _machines(TINY, 11)
    programs = [[I.make("fence")] * n + [I.make("halt")] for n in range(1, 8)]
    rng = random.Random(0)
    for _ in range(60):
        base = PROGRAM + 0x200 * rng.randrange(4)
        program = encode_program(rng.choice(programs))
        for machine in (planned, reference):
            machine.write_dram(base, program)
        _assert_same(planned, reference, base, runs=1)
        # The plan just used is kept; the limits hold.
        assert planned._plans[base][0].key == program
        assert all(len(plans) <= 2 for plans in planned._plans.values())
        assert len(planned._plan_order) == sum(len(plans) for plans in planned._plans.values()) <= 4
        held = sum(len(plan.timeline) for plans in planned._plans.values() for plan in plans)
        assert held == planned._planned_instructions <= 40


# Programs with control flow: plans per course ---------------------------------------------------------------

def _write_both(machines, addr: int, data) -> None:
    for machine in machines:
        machine.write_dram(addr, data)


def _random_control(rng: random.Random, config: Config, length: int) -> I:
    """A SCALAR, BRANCH or PREDICATE on r1..r3, or a register-offset LOAD/STORE/MATMUL/PREDICATE; the
    branches may leave the program, fall below its base or loop (the watchdog or the limit stops them)."""
    kind = rng.choice(["scalar", "scalar", "branch", "branch", "predicate", "offset"])
    reg = lambda: rng.choice([0, 1, 2, 3])                          # noqa: E731
    if kind == "scalar":
        return I.make("scalar", dst=reg(), src1=reg(), src2=reg(), imm=rng.randint(-3, 3))
    if kind == "branch":
        return I.make("branch", cond=rng.choice(["always", "eq", "ne", "lt", "ge"]), a=reg(), b=reg(),
                      offset=rng.randint(-length - 2, length + 2))
    if kind == "predicate":
        mem = rng.choice(["spad", "acc"])
        return I.make("predicate", op=rng.choice(["any", "max"]), dst=reg(), mem=mem, addr=rng.randrange(12),
                      rows=rng.randint(1, 4), addr_reg=rng.choice([0, 0, 1, 2]))
    which = rng.choice(["load", "store", "matmul"])
    if which == "matmul":
        return I.make("matmul", acc=rng.randrange(8), a=rng.randrange(8), b=rng.randrange(8), a_stride=4, m=4,
                      n=config.cols, k=4, a_reg=rng.choice([1, 2, 3]), accumulate=True)
    return I.make(which, mem="spad", addr=rng.randrange(8), rows=2, len=config.cols,
                  dram=DATA + rng.randrange(64), stride=config.cols, addr_reg=rng.choice([0, 1, 2]),
                  dram_reg=rng.choice([0, 1, 3]))


def _random_control_program(rng: random.Random, config: Config, base: int) -> bytes:
    length = rng.randint(2, 20)
    tokens: dict = {}
    words = []
    for _ in range(length):
        if rng.random() < 0.45:
            insn = _random_control(rng, config, length)
        else:
            insn = _random_instruction(rng, config, base, length, rng.random() < 0.5, tokens)
        words.append(insn.to_bytes())
    words.append(I.make("halt").to_bytes())
    return b"".join(words)


@pytest.mark.parametrize("race_check", [True, False])
def test_random_control_flow_programs_match_the_reference(race_check):
    """Branches, loops, predicates and register offsets, with the host's registers and the data changed
    between runs (so that runs take new courses through a kept plan) and random cycle limits."""
    config = TINY
    outcomes: dict = {}
    for seed in range(120):
        rng = random.Random(1000 + seed)
        planned, reference = _machines(config, seed)
        planned.race_check = reference.race_check = race_check
        base = rng.choice([PROGRAM, PROGRAM, 0])
        _write_both((planned, reference), base, _random_control_program(rng, config, base))
        limit = rng.choice([None, rng.randint(0, 30), 400])
        cycle_limit = rng.choice([0, 0, rng.randint(1, 300)])
        for run in range(4):
            if run and rng.random() < 0.5:       # new data for the predicates
                data = np.random.default_rng([seed, run]).integers(-2, 3, (12, config.cols), dtype=np.int8)
                for machine in (planned, reference):
                    machine.spad[:12] = data
                    machine.acc[:12] = data
            if run and rng.random() < 0.5:       # the host's registers
                register, value = rng.randint(1, 3), rng.randint(-2, 2)
                for machine in (planned, reference):
                    machine.write_scalar(register, value)
            try:
                want = reference.run(base, max_instructions=limit or 5000, cycle_limit=cycle_limit)
            except Exception as error:           # noqa: BLE001 -- compared below
                want = error
            try:
                have = planned.run(base, max_instructions=limit or 5000, cycle_limit=cycle_limit)
            except Exception as error:           # noqa: BLE001
                have = error
            if isinstance(want, Exception):
                assert type(have) is type(want) and str(have) == str(want), (seed, run, have, want)
                assert [getattr(have, name, None) for name in ("cause", "pc", "other_pc")] == \
                       [getattr(want, name, None) for name in ("cause", "pc", "other_pc")]
                kind = getattr(want, "cause", None) or type(want).__name__
            else:
                assert (have.counters, have.instructions, have.cycles, have.halt_pc) == \
                       (want.counters, want.instructions, want.cycles, want.halt_pc), (seed, run)
                assert [(e.insn, e.dispatch, e.start, e.end, e.pc) for e in have.timeline] == \
                       [(e.insn, e.dispatch, e.start, e.end, e.pc) for e in want.timeline]
                kind = "done"
            assert _state(planned) == _state(reference), (seed, run)
            outcomes[str(kind)] = outcomes.get(str(kind), 0) + 1
    assert outcomes.get("done", 0) > 40, outcomes
    for kind in ("ErrorCause.BRANCH_RANGE", "ErrorCause.WATCHDOG", "InstructionLimitExceeded"):
        assert outcomes.get(kind, 0) > 0, outcomes
    if race_check:
        assert outcomes.get("ErrorCause.RACE", 0) > 0, outcomes


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_generated_control_flow_programs_match_the_reference(preset):
    """sim.progen's loops with data-dependent branches, on fresh data each run: the plan grows a course
    per outcome and replays the ones it has seen."""
    from braze.sim.progen import generate_control_flow

    config = Config.preset(preset)
    for seed in range(20):
        program = generate_control_flow(config, seed, size=2 + seed % 4)
        planned, reference = Machine(config), Machine(config, fast=False)
        for machine in (planned, reference):
            for addr, blob in program.image:
                machine.write_dram(addr, blob)
        rng = np.random.default_rng(seed)
        for _ in range(4):
            _assert_same(planned, reference, program.base, runs=1)
            inputs = [region for region in program.regions if region.kind == "input"]
            region = inputs[int(rng.integers(len(inputs)))]
            zeros = bytes(region.size) if rng.random() < 0.5 else region.data
            _write_both((planned, reference), region.addr, zeros)


def _skip_program(rows: int = 4) -> list[I]:
    """r1 = any(block); skip the MATMUL when it is all zero; r3 = the host's r2 + 1."""
    return [I.make("load", mem="spad", addr=0, rows=rows, len=4, dram=DATA, stride=4),
            I.make("load", mem="spad", addr=4, rows=4, len=4, dram=DATA + 0x40, stride=4, push_next=True),
            I.make("predicate", op="any", dst=1, mem="spad", addr=0, rows=rows, pop_prev=True),
            I.make("branch", cond="eq", a=1, offset=2),
            I.make("matmul", acc=0, a=0, b=4, a_stride=4, m=4, n=4, k=4, accumulate=True),
            I.make("scalar", dst=3, src1=2, imm=1),
            I.make("store", mem="acc", addr=0, rows=4, len=4, dram=DATA + 0x100, stride=16),
            I.make("halt")]


def test_a_data_dependent_program_keeps_one_plan_with_a_course_per_outcome():
    planned, reference = _machines(TINY, 21)
    _write_both((planned, reference), PROGRAM, encode_program(_skip_program()))
    blocks = [np.zeros(16, np.int8), np.arange(16, dtype=np.int8) - 3]
    for run in range(6):
        _write_both((planned, reference), DATA, blocks[run % 2])
        for machine in (planned, reference):
            machine.write_scalar(2, run // 4)
        _assert_same(planned, reference, PROGRAM, runs=1)
    [tree] = planned._plans[PROGRAM]
    assert tree.kind == "data"                         # the first stretch ends at the PREDICATE
    assert sorted(tree.children) == [0, 1]             # both outcomes kept...
    register = tree.children[0]
    assert register.kind == "register" and sorted(register.children) == [0, 1]   # ...and both r2 values
    assert tree.paths == 4


def test_a_loop_without_checkpoints_is_one_plan_replayed():
    """A counted loop whose registers the program sets itself is planned like straight-line code."""
    planned, reference = _machines(TINY, 22)
    body = [I.make("load", mem="spad", addr=0, rows=1, len=4, dram=DATA, stride=4, dram_reg=2),
            I.make("fence"),
            I.make("store", mem="spad", addr=0, rows=1, len=4, dram=DATA + 0x200, stride=4, dram_reg=2),
            I.make("fence")]
    program = ([I.make("scalar", dst=1, imm=5), I.make("scalar", dst=2, imm=0)] + body
               + [I.make("scalar", dst=2, src1=2, imm=4), I.make("scalar", dst=1, src1=1, imm=-1),
                  I.make("branch", cond="ne", a=1, offset=-(len(body) + 2)), I.make("halt")])
    _write_both((planned, reference), PROGRAM, encode_program(program))
    _assert_same(planned, reference, PROGRAM, runs=3)
    [plan] = planned._plans[PROGRAM]
    assert plan.kind == "end" and plan.instructions == 2 + 5 * 7 + 1
    assert planned.read_dram(DATA + 0x200, 20) == planned.read_dram(DATA, 20)


def test_a_predicated_program_that_stores_over_its_own_code():
    """After a PREDICATE has run the walk cannot fall back to the reference path: the STORE over a later
    instruction runs before the walk fetches it."""
    halt = np.frombuffer(I.make("halt").to_bytes(), dtype=np.int8).reshape(4, 4)
    program = [I.make("predicate", op="any", dst=1, mem="spad", addr=0, rows=4),
               I.make("store", mem="spad", addr=0, rows=4, len=4, dram=PROGRAM + 16 * 4, stride=4),
               I.make("fence"),
               I.make("branch", cond="eq", a=1, offset=2),
               I.make("vector", op="mov", dst_mem="spad", src1_mem="spad", dst=9, src1=8, rows=1),
               I.make("halt")]
    for block in (halt, np.zeros((4, 4), np.int8)):
        planned, reference = _machines(TINY, 23)
        for machine in (planned, reference):
            machine.spad[:4, :4] = block
        _write_both((planned, reference), PROGRAM, encode_program(program))
        _assert_same(planned, reference, PROGRAM, runs=2)
