"""The random program generator: validity on the reference model, coverage, determinism."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from braze.isa import (
    PRESETS,
    SNAPSHOT_BYTES,
    Config,
    ConfigReg,
    Memory,
    Opcode,
    Unit,
    VectorOp,
    encode_program,
)
from braze.isa.asm import assemble
from braze.isa.encoding import CONTROL_FLOW_OPCODES, UNARY_VECTOR_OPS, Activation
from braze.isa.model import Machine
from braze.isa.timing import element_bytes, schedule, token_queues
from braze.sim.progen import DEFAULT_SIZE, GeneratedProgram, generate, sync_tokens

TINY = Config.preset("tiny")


def run_on_model(program: GeneratedProgram, machine: Machine | None = None) -> Machine:
    machine = machine or Machine(program.config)
    for addr, blob in program.image:
        machine.write_dram(addr, blob)
    result = machine.run(program.base)        # raises on any error: range, overlap, deadlock, race
    assert result.instructions == len(program.instructions)
    return machine


def assert_tokens_balanced(program: GeneratedProgram) -> None:
    """Every token pushed is popped, so no token is left in a queue at HALT."""
    pushed, popped = collections.Counter(), collections.Counter()
    for insn in program.instructions:
        if insn.unit is Unit.CONTROL:
            continue
        pops, pushes = token_queues(insn)
        popped.update(pops)
        pushed.update(pushes)
    assert pushed == popped


def external_spans(insn) -> list[tuple[int, int, bool]]:
    """(first byte, end, is_write) of each row an instruction moves to or from external memory."""
    if insn.opcode is Opcode.COUNTERS:
        return [(insn.dram, insn.dram + SNAPSHOT_BYTES, True)]
    if insn.opcode in (Opcode.LOAD, Opcode.STORE) and not (insn.opcode is Opcode.LOAD and insn.zero):
        row_bytes = insn.len * element_bytes(insn.mem)
        return [(insn.dram + r * insn.stride, insn.dram + r * insn.stride + row_bytes,
                 insn.opcode is not Opcode.LOAD) for r in range(insn.rows)]
    return []


def assert_regions_consistent(program: GeneratedProgram) -> None:
    spans = sorted([program.program_span] + [(r.addr, r.end) for r in program.regions])
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, "regions overlap"
    assert spans[-1][1] <= program.config.dram_bytes
    for insn in program.instructions:
        for start, end, write in external_spans(insn):
            kinds = {"counters"} if insn.opcode is Opcode.COUNTERS else {"output"} if write \
                else {"input", "output"}
            assert any(r.kind in kinds and r.addr <= start and end <= r.end for r in program.regions), \
                f"{insn} touches bytes 0x{start:x}..0x{end:x} outside its regions"


@pytest.mark.parametrize(("preset", "seeds"), [("tiny", 150), ("default", 60), ("large", 40)])
def test_generated_programs_run_on_the_reference_model(preset, seeds):
    config = Config.preset(preset)
    for seed in range(seeds):
        program = generate(config, seed)
        assert program.instructions[-1].opcode is Opcode.HALT
        assert program.seed == seed
        run_on_model(program)
        assert_tokens_balanced(program)
        assert_regions_consistent(program)


def test_sizes_and_a_custom_config():
    config = Config.parse("tiny:token_depth=1,queue_depth=1")
    for seed in range(30):
        program = generate(config, seed, size=1 + seed % 4)
        run_on_model(program)
    big = generate(TINY, 3, size=24)
    run_on_model(big)
    assert len(big.instructions) > len(generate(TINY, 3, size=2).instructions)


def test_results_do_not_depend_on_earlier_state():
    """Programs read only rows and registers they wrote: garbage left on chip changes nothing."""
    rng = np.random.default_rng(11)
    for seed in range(40):
        program = generate(TINY, seed)
        clean = run_on_model(program)
        dirty = Machine(TINY)
        dirty.spad[:] = rng.integers(-128, 128, dirty.spad.shape)
        dirty.acc[:] = rng.integers(-(1 << 31), 1 << 31, dirty.acc.shape)
        dirty.config_regs.update({reg: int(rng.integers(-1000, 1000)) for reg in ConfigReg})
        dirty.table[:] = rng.integers(-128, 128, dirty.table.shape)
        run_on_model(program, dirty)
        assert np.array_equal(clean.dram, dirty.dram), f"seed {seed}"


def test_determinism_by_seed():
    first, again = generate(TINY, 1234), generate(TINY, 1234)
    assert first == again
    assert first.program_bytes == again.program_bytes and first.image == again.image
    other = generate(TINY, 1235)
    assert other.program_bytes != first.program_bytes
    from_rng = generate(TINY, np.random.default_rng(1234))
    assert from_rng.program_bytes == first.program_bytes and from_rng.seed is None


def test_assembly_and_image():
    program = generate(TINY, 5)
    assert encode_program(assemble(program.assembly)) == program.program_bytes
    assert program.image[0] == (program.base, program.program_bytes)
    assert program.base % 16 == 0
    assert {r.kind for r in program.outputs} <= {"output", "counters"}
    assert all(r.kind == "input" for r in program.regions if r not in program.outputs)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="size=0"):
        generate(TINY, 0, size=0)
    with pytest.raises(TypeError, match="rng_or_seed=-1"):
        generate(TINY, -1)
    with pytest.raises(TypeError, match="Config"):
        generate("tiny", 0)
    with pytest.raises(ValueError, match="too small"):
        generate(Config.parse("tiny:spad_bytes=512,spad_banks=2"), 0)


def test_coverage_over_many_programs():
    seen = collections.Counter()
    overlapping = 0
    programs = 300
    for seed in range(programs):
        program = generate(TINY, seed)
        timing = schedule(list(program.instructions), TINY)
        if sum(timing.busy.values()) > timing.cycles:
            overlapping += 1
        bus = TINY.dma_bus_bytes
        for insn in program.instructions:
            op = insn.opcode
            seen[op] += 1
            seen.update((insn.unit, flag) for flag in insn.deps)
            if op is Opcode.LOAD:
                seen["load " + insn.mem.name] += 1
                seen["load zero"] += insn.zero
                if not insn.zero:
                    seen["load partial row"] += insn.len < TINY.cols
                    seen["load unaligned"] += insn.dram % bus != 0
                    seen["load odd stride"] += insn.rows > 1 and insn.stride % bus != 0
                    seen["load overlapping rows"] += insn.rows > 1 and insn.stride < insn.len
            elif op is Opcode.STORE:
                seen["store " + insn.mem.name] += 1
                seen["store unaligned"] += insn.dram % bus != 0
            elif op is Opcode.MATMUL:
                seen["k > rows, not a multiple"] += insn.k > TINY.rows and insn.k % TINY.rows != 0
                seen["a_stride != m"] += insn.a_stride != insn.m
                seen["accumulate"] += insn.accumulate
                seen["overwrite"] += not insn.accumulate
                seen["m > rows"] += insn.m > TINY.rows
            elif op is Opcode.EPILOGUE:
                for stage in ("bias", "requant", "residual"):
                    seen["epilogue " + stage] += getattr(insn, stage)
                seen["epilogue act " + insn.act.name] += 1
                seen["epilogue out " + insn.out.name] += 1
                seen["epilogue in place"] += insn.out is Memory.ACC and insn.dst == insn.src
            elif op is Opcode.VECTOR:
                seen[insn.op] += 1
                seen[("vector", insn.src1_mem, insn.dst_mem)] += 1
                seen["vector imm"] += insn.use_imm and insn.op not in UNARY_VECTOR_OPS
                seen["vector in place"] += insn.src1_mem is insn.dst_mem and insn.src1 == insn.dst
            elif op is Opcode.CONFIG:
                seen[insn.reg] += 1
            elif op is Opcode.COUNTERS:
                seen["counters reset" if insn.reset else "counters keep"] += 1
    # Control flow is generate_control_flow's (tests/sim/test_progen_control_flow.py).
    wanted = [op for op in Opcode if op not in CONTROL_FLOW_OPCODES] + list(VectorOp) + list(ConfigReg) + [
        (Unit.LOAD, "push_next"), (Unit.LOAD, "pop_next"), (Unit.COMPUTE, "pop_prev"),
        (Unit.COMPUTE, "push_prev"), (Unit.COMPUTE, "push_next"), (Unit.COMPUTE, "pop_next"),
        (Unit.STORE, "pop_prev"), (Unit.STORE, "push_prev"),
        "load SPAD", "load ACC", "load zero", "load partial row", "load unaligned", "load odd stride",
        "load overlapping rows", "store SPAD", "store ACC", "store unaligned",
        "k > rows, not a multiple", "a_stride != m", "accumulate", "overwrite", "m > rows",
        "epilogue bias", "epilogue requant", "epilogue residual", "epilogue in place",
        "epilogue out SPAD", "epilogue out ACC", "vector imm", "vector in place",
        "counters reset", "counters keep",
    ] + [f"epilogue act {act.name}" for act in Activation] + [
        ("vector", src, dst) for src in Memory for dst in Memory]
    missing = [item for item in wanted if not seen[item]]
    assert not missing, f"never generated: {missing}"
    # Tokens on every queue in most programs, and the units really overlap (not fenced apart).
    assert overlapping >= 0.9 * programs
    assert seen[Opcode.FENCE] < seen[Opcode.MATMUL]


def test_sync_tokens_repairs_a_program_with_instructions_dropped():
    rng = np.random.default_rng(3)
    for seed in range(40):
        program = generate(TINY, seed, size=DEFAULT_SIZE)
        body = list(program.instructions[:-1])
        keep = [insn for insn in body if rng.random() < 0.7]
        repaired = sync_tokens(TINY, keep + [program.instructions[-1]])
        candidate = program.with_instructions(repaired)
        run_on_model(candidate)
        assert_tokens_balanced(candidate)
        # Only relays (CONFIG) and FENCEs are added.
        added = collections.Counter(i.opcode for i in repaired) - collections.Counter(i.opcode for i in keep)
        assert set(added) <= {Opcode.CONFIG, Opcode.FENCE, Opcode.HALT}


def test_every_preset_is_supported():
    for name, config in PRESETS.items():
        assert generate(config, 0).config is config, name
