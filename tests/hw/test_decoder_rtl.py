# amaranth: UnusedElaboratable=no
"""Differential test of the hardware decoder against ``braze.isa.decode`` and the model's range and
overlap rules."""

import random

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from braze.hw.decoder import Decoder, a_extent_value
from braze.isa import (
    FORMATS,
    INSN_BITS,
    PRESETS,
    Config,
    ErrorCause,
    ExecutionError,
    IllegalInstruction,
    Instruction,
    Opcode,
    decode,
)
from braze.isa.encoding import DEP_FLAGS, INSTRUCTION, Kind, field_range
from braze.isa.model import check_overlap, check_ranges


def reference_cause(word: int, config: Config) -> ErrorCause:
    """The one oracle: ``decode``, then the reference model's ``check_ranges`` and ``check_overlap``."""
    try:
        insn = decode(word)
    except IllegalInstruction as exc:
        return exc.cause
    try:
        check_ranges(insn, config)
        check_overlap(insn, config)
    except ExecutionError as exc:
        return exc.cause
    return ErrorCause.NONE


def _random_field(rng: random.Random, spec, config: Config):
    if spec.kind is Kind.ENUM:
        return rng.choice(list(spec.shape))
    if spec.kind is Kind.FLAG:
        return rng.random() < 0.5
    low, high = field_range(spec)
    # Mostly values near this configuration's boundaries, so that range rules pass and fail.
    scale = rng.choice([config.rows, config.cols, config.spad_rows, config.acc_rows])
    near = [scale - 2, scale - 1, scale, scale + 1, rng.randrange(scale + 1), rng.randrange(4)]
    candidates = [v for v in near if low <= v <= high]
    if candidates and rng.random() < 0.85:
        return rng.choice(candidates)
    return rng.randint(low, high)


#: Per opcode with an overlap rule: (destination memory field, destination, row count, sources).
_OVERLAP_FIELDS = {
    Opcode.EPILOGUE: ("out", "dst", "m", ("src", "res_addr")),
    Opcode.VECTOR: ("dst_mem", "dst", "rows", ("src1", "src2")),
}


def _near_overlap(rng: random.Random, opcode: Opcode, values: dict, config: Config) -> None:
    """Move the sources to within one row count of the destination, mostly in its memory.

    Offsets run from -count to +count, so equal, partly overlapping and adjacent (disjoint)
    ranges all occur, mostly inside both memories so that the range rules pass.
    """
    mem_field, dst_field, count_field, sources = _OVERLAP_FIELDS[opcode]
    count = rng.randint(1, 6)
    values[count_field] = count
    values[dst_field] = count + rng.randrange(min(config.spad_rows, config.acc_rows) - 3 * count)
    for source in sources:
        values[source] = values[dst_field] + rng.randint(-count, count)
    if opcode is Opcode.VECTOR and rng.random() < 0.8:
        values["src1_mem"] = values["src2_mem"] = values[mem_field]


def random_word(rng: random.Random, config: Config) -> int:
    """A legal instruction (EPILOGUE/VECTOR often with sources near the destination), then
    (often) one field, flag or bit perturbed."""
    fmt = rng.choice(FORMATS)
    values = {spec.name: _random_field(rng, spec, config) for spec in fmt.fields}
    if fmt.opcode in _OVERLAP_FIELDS and rng.random() < 0.5:
        _near_overlap(rng, fmt.opcode, values, config)
    insn = Instruction.make(fmt.opcode, **values)
    word = insn.encode()
    choice = rng.random()
    if choice < 0.3:
        return word
    if choice < 0.5:
        return word ^ (1 << rng.randrange(INSN_BITS))
    if choice < 0.6:
        deps = INSTRUCTION["deps"]
        return word ^ (1 << (deps.offset + rng.randrange(len(DEP_FLAGS))))
    if choice < 0.65:
        op = INSTRUCTION["opcode"]
        return (word & ~((1 << op.width) - 1)) | rng.randrange(1 << op.width)
    if not fmt.fields:
        return word ^ (1 << rng.randrange(INSN_BITS))
    # Overwrite one whole field with a random raw value (zero counts, undefined enums, beyond limits).
    spec = rng.choice(fmt.fields)
    field = fmt.layout[spec.name]
    offset = INSTRUCTION["args"].offset + field.offset
    mask = ((1 << field.width) - 1) << offset
    raw = rng.choice([0, rng.getrandbits(field.width), (1 << field.width) - 1])
    return (word & ~mask) | (raw << offset)


def _run_decoder(config: Config, words: list[int], *, extent_input: bool = False
                 ) -> list[tuple[int, ErrorCause, int]]:
    """The decoder's (legal, cause, unit) per word; with ``extent_input`` it is given each word's A
    extent (as the control core's decoders are, from the fetch unit) instead of computing it."""
    dut = Decoder(config, extent_input=extent_input)
    results = []

    async def testbench(ctx):
        for word in words:
            ctx.set(dut.word.as_value(), word)
            if extent_input:
                ctx.set(dut.a_extent_in, a_extent_value(config, word))
            else:
                assert ctx.get(dut.a_extent) == a_extent_value(config, word), f"word 0x{word:032x}"
            results.append((ctx.get(dut.legal), ctx.get(dut.cause), ctx.get(dut.unit)))

    sim = Simulator(dut)
    sim.add_testbench(testbench)
    sim.run()
    return results


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_decoder_matches_reference(preset):
    config = PRESETS[preset]
    rng = random.Random(f"decoder-{preset}")
    words = [random_word(rng, config) for _ in range(8000)]
    expected = [reference_cause(w, config) for w in words]
    # The mix must exercise every cause the decoder can report, or the comparison proves little.
    reachable = {ErrorCause.NONE, ErrorCause.ILLEGAL_OPCODE, ErrorCause.BAD_DEPS, ErrorCause.RESERVED_BITS,
                 ErrorCause.BAD_FIELD, ErrorCause.SPAD_RANGE, ErrorCause.ACC_RANGE, ErrorCause.TILE_RANGE,
                 ErrorCause.OVERLAP}
    assert set(expected) == reachable
    overlapping = {decode(w).opcode for w, cause in zip(words, expected, strict=True)
                   if cause is ErrorCause.OVERLAP}
    assert overlapping == {Opcode.EPILOGUE, Opcode.VECTOR}
    for word, want, (legal, cause, unit) in zip(words, expected, _run_decoder(config, words), strict=True):
        assert cause == want, f"word 0x{word:032x}: decoder says {cause}, reference {want}"
        assert legal == (want is ErrorCause.NONE)
        if want is not ErrorCause.ILLEGAL_OPCODE:
            assert unit == decode_unit(word)


def test_decoder_given_the_a_extent_matches_reference():
    """The control core's decoders take the MATMUL A extent from the fetch unit: same causes."""
    config = PRESETS["tiny"]
    rng = random.Random("decoder-extent")
    words = [random_word(rng, config) for _ in range(3000)]
    expected = [reference_cause(w, config) for w in words]
    assert ErrorCause.SPAD_RANGE in expected and ErrorCause.NONE in expected
    for word, want, (_, cause, _) in zip(words, expected, _run_decoder(config, words, extent_input=True),
                                         strict=True):
        assert cause == want, f"word 0x{word:032x}: decoder says {cause}, reference {want}"


def test_decoder_without_vector_unit_matches_reference():
    """Config.vector_unit=0: an encoding-legal VECTOR is ILLEGAL_OPCODE, after the encoding checks, in
    the decoder as in the reference model; other words are unchanged."""
    config = PRESETS["tiny"].replace(vector_unit=0)
    rng = random.Random("decoder-no-vector")
    words = [random_word(rng, config) for _ in range(2000)]
    expected = [reference_cause(w, config) for w in words]
    vector = INSTRUCTION["opcode"].offset, Opcode.VECTOR.value
    vectors = [(w, cause) for w, cause in zip(words, expected, strict=True)
               if (w >> vector[0]) & 0xF == vector[1]]
    # Encoding-legal VECTORs are illegal here, while a VECTOR's encoding errors still come first.
    assert {cause for _, cause in vectors} >= {ErrorCause.ILLEGAL_OPCODE, ErrorCause.BAD_FIELD}
    assert ErrorCause.NONE in expected
    for word, want, (_, cause, _) in zip(words, expected, _run_decoder(config, words), strict=True):
        assert cause == want, f"word 0x{word:032x}: decoder says {cause}, reference {want}"


def decode_unit(word: int):
    op_field = INSTRUCTION["opcode"]
    opcode = Opcode((word >> op_field.offset) & ((1 << op_field.width) - 1))
    return next(fmt.unit for fmt in FORMATS if fmt.opcode is opcode)


def test_decoder_boundaries():
    """Exactly at and one past each memory's end, on a non-preset configuration."""
    config = Config(rows=2, cols=8, spad_bytes=8 * 32, spad_banks=2, acc_bytes=32 * 16, acc_banks=2)
    s, a = config.spad_rows, config.acc_rows
    cases = [
        Instruction.make("load", mem="spad", addr=s - 3, rows=3, len=8),
        Instruction.make("load", mem="spad", addr=s - 3, rows=4, len=8),
        Instruction.make("load", mem="acc", addr=a - 1, rows=1, len=9),
        Instruction.make("store", mem="acc", addr=a - 1, rows=2, len=1, dram=0, stride=0),
        Instruction.make("matmul", acc=0, a=0, b=s - 4, a_stride=7, m=3, n=8, k=5),
        Instruction.make("matmul", acc=0, a=s - 17, b=0, a_stride=7, m=3, n=8, k=5),
        Instruction.make("matmul", acc=0, a=s - 16, b=0, a_stride=7, m=3, n=8, k=5),
        Instruction.make("epilogue", src=0, m=2, n=8, dst=0, requant=True, quant_addr=a - 2),
        Instruction.make("epilogue", src=0, m=2, n=8, dst=0, requant=True, quant_addr=a - 1),
        Instruction.make("epilogue", src=0, m=2, n=8, dst=a - 2, out="acc", residual=True, res_addr=s - 2),
        Instruction.make("vector", op="mov", dst_mem="spad", src1_mem="acc", src2_mem="acc", src2=a,
                         dst=0, src1=0, rows=a),
        Instruction.make("vector", op="add", dst_mem="spad", src1_mem="acc", src2_mem="acc", src2=1,
                         dst=0, src1=0, rows=a),
    ]
    words = [insn.encode() for insn in cases]
    expected = [reference_cause(w, config) for w in words]
    assert expected == [ErrorCause.NONE, ErrorCause.SPAD_RANGE, ErrorCause.TILE_RANGE, ErrorCause.ACC_RANGE,
                        ErrorCause.SPAD_RANGE, ErrorCause.NONE, ErrorCause.SPAD_RANGE, ErrorCause.NONE,
                        ErrorCause.ACC_RANGE, ErrorCause.NONE, ErrorCause.NONE, ErrorCause.ACC_RANGE]
    assert [cause for _, cause, _ in _run_decoder(config, words)] == expected


def test_decoder_overlap_boundaries():
    """Equal, adjacent and partly overlapping ranges; sources not read or in another memory;
    a range failure taking precedence over an overlap."""
    config = Config(rows=2, cols=8, spad_bytes=8 * 32, spad_banks=2, acc_bytes=32 * 16, acc_banks=2)
    assert (config.spad_rows, config.acc_rows) == (32, 16)

    def epilogue(**fields):
        return Instruction.make("epilogue", n=8, **{"m": 3, "out": "acc"} | fields)

    def vector(**fields):
        return Instruction.make("vector", rows=2, **{"op": "add", "dst_mem": "spad", "src1_mem": "spad",
                                                     "src2_mem": "spad"} | fields)

    cases = [
        (epilogue(src=4, dst=5), ErrorCause.OVERLAP),
        (epilogue(src=4, dst=2), ErrorCause.OVERLAP),
        (epilogue(src=4, dst=7), ErrorCause.NONE),            # adjacent above
        (epilogue(src=4, dst=1), ErrorCause.NONE),            # adjacent below
        (epilogue(src=4, dst=4), ErrorCause.NONE),            # the same rows
        (epilogue(src=4, dst=5, out="spad"), ErrorCause.NONE),
        (epilogue(src=0, dst=5, out="spad", residual=True, res_addr=6), ErrorCause.OVERLAP),
        (epilogue(src=0, dst=5, out="spad", residual=True, res_addr=3), ErrorCause.OVERLAP),
        (epilogue(src=0, dst=5, out="spad", residual=True, res_addr=5), ErrorCause.NONE),
        (epilogue(src=0, dst=5, out="spad", residual=False, res_addr=6), ErrorCause.NONE),
        (epilogue(src=0, dst=5, out="acc", residual=True, res_addr=6), ErrorCause.NONE),
        (epilogue(src=13, dst=14), ErrorCause.ACC_RANGE),     # destination beyond acc, before OVERLAP
        (vector(src1=3, src2=10, dst=4), ErrorCause.OVERLAP),
        (vector(src1=10, src2=5, dst=4), ErrorCause.OVERLAP),
        (vector(src1=10, src2=6, dst=4), ErrorCause.NONE),    # adjacent
        (vector(src1=4, src2=4, dst=4), ErrorCause.NONE),
        (vector(op="mov", src1=10, src2=5, dst=4), ErrorCause.NONE),
        (vector(use_imm=True, src1=10, src2=5, dst=4), ErrorCause.NONE),
        (vector(src2_mem="acc", src1=10, src2=5, dst=4), ErrorCause.NONE),
        (vector(src1_mem="acc", dst_mem="acc", src1=3, src2=0, dst=4), ErrorCause.OVERLAP),
        (vector(src1_mem="acc", src1=3, src2=0, dst=4), ErrorCause.NONE),
        (vector(op="mov", src1=30, dst=31), ErrorCause.SPAD_RANGE),
    ]
    words = [insn.encode() for insn, _ in cases]
    expected = [cause for _, cause in cases]
    assert [reference_cause(w, config) for w in words] == expected
    assert [cause for _, cause, _ in _run_decoder(config, words)] == expected


def test_decoder_rejects_bad_config():
    with pytest.raises(TypeError, match="Config"):
        Decoder("tiny")


def test_decoder_converts_to_verilog():
    text = verilog.convert(Decoder(PRESETS["tiny"]), name="braze_decoder")
    assert "module braze_decoder" in text
