"""Property tests of the instruction encoding, decoding and the assembler round trip.

Every strategy is derived from ``FORMATS``, ``field_range`` and ``ALLOWED_DEPS``; nothing is
written per opcode, so a new field or opcode is covered without touching this file.
"""

from __future__ import annotations

import random
import re

import pytest
from amaranth.hdl import Shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from braze.isa.asm import assemble, assemble_bytes, disassemble
from braze.isa.encoding import (
    ALLOWED_DEPS,
    ARGS_OFFSET,
    DEP_FLAGS,
    FORMAT_BY_OPCODE,
    FORMATS,
    INSN_BITS,
    INSTRUCTION,
    ErrorCause,
    Format,
    Instruction,
    Kind,
    Opcode,
    decode,
    decode_program,
    encode_program,
    field_range,
)
from braze.isa.errors import IllegalInstruction

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPCODE_WIDTH = INSTRUCTION["opcode"].width
DEPS_OFFSET = INSTRUCTION["deps"].offset
by_mnemonic = pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.mnemonic)


def legal_values(spec):
    if spec.kind is Kind.ENUM:
        return st.sampled_from(list(spec.shape))
    if spec.kind is Kind.FLAG:
        return st.booleans()
    low, high = field_range(spec)
    return st.integers(low, high)


def dep_sets(fmt: Format):
    allowed = sorted(ALLOWED_DEPS[fmt.unit])
    return st.sets(st.sampled_from(allowed)) if allowed else st.just(set())


@st.composite
def instructions(draw, fmt: Format | None = None) -> Instruction:
    fmt = fmt or draw(st.sampled_from(FORMATS))
    values = {spec.name: draw(legal_values(spec)) for spec in fmt.fields}
    deps = draw(dep_sets(fmt))
    return Instruction.make(fmt.opcode, **values, **{name: True for name in deps})


def packed_word(insn: Instruction) -> int:
    """The word built independently of amaranth: fields packed LSB-first in format order."""
    word = insn.opcode.value
    for index, name in enumerate(DEP_FLAGS):
        word |= int(name in insn.deps) << (OPCODE_WIDTH + index)
    offset = OPCODE_WIDTH + len(DEP_FLAGS)
    for spec in insn.format.fields:
        value = insn.args[spec.name]
        raw = value.value if spec.kind is Kind.ENUM else int(value)
        word |= (raw & ((1 << spec.width) - 1)) << offset
        offset += spec.width
    return word


@by_mnemonic
@SETTINGS
@given(data=st.data())
def test_encode_decode_roundtrip(fmt, data):
    insn = data.draw(instructions(fmt))
    word = insn.encode()
    assert word == packed_word(insn)
    assert insn.to_bytes() == word.to_bytes(16, "little")
    assert decode(word) == insn


@by_mnemonic
@SETTINGS
@given(data=st.data())
def test_disassemble_assemble_roundtrip(fmt, data):
    insn = data.draw(instructions(fmt))
    text = disassemble([insn])
    assert assemble(text) == [insn]
    assert assemble_bytes(disassemble(insn.to_bytes(), offsets=True)) == insn.to_bytes()


@SETTINGS
@given(program=st.lists(instructions(), max_size=8))
def test_program_roundtrip(program):
    blob = encode_program(program)
    assert decode_program(blob) == program
    assert assemble_bytes(disassemble(blob)) == blob


@by_mnemonic
@SETTINGS
@given(data=st.data())
def test_fields_in_any_order_and_any_case(fmt, data):
    """Every field written explicitly, shuffled, with random letter case, assembles the same."""
    insn = data.draw(instructions(fmt))
    words = []
    for spec in fmt.fields:
        value = insn.args[spec.name]
        if spec.kind is Kind.FLAG:
            if value:
                words.append(spec.name)
        elif spec.kind is Kind.ENUM:
            words.append(f"{spec.name}={value.name.lower()}")
        else:
            words.append(f"{spec.name}={value}")
    words += sorted(insn.deps)
    shuffled = data.draw(st.permutations(words))
    seed = data.draw(st.integers(0, 1 << 32))
    rng = random.Random(seed)
    mixed = [rng.choice([str.upper, str.lower, str.title])(word) for word in [fmt.mnemonic, *shuffled]]
    assert assemble(" ".join(mixed)) == [insn]


def expected_cause(word: int) -> ErrorCause | None:
    """The first illegality of a word, in decode's documented order, or None if legal."""
    raw_opcode = word & ((1 << OPCODE_WIDTH) - 1)
    if raw_opcode not in {op.value for op in Opcode}:
        return ErrorCause.ILLEGAL_OPCODE
    fmt = FORMAT_BY_OPCODE[Opcode(raw_opcode)]
    deps = {name for index, name in enumerate(DEP_FLAGS) if word >> (DEPS_OFFSET + index) & 1}
    if deps - ALLOWED_DEPS[fmt.unit]:
        return ErrorCause.BAD_DEPS
    args = word >> ARGS_OFFSET
    used_bits = sum(spec.width for spec in fmt.fields)
    if args >> used_bits:
        return ErrorCause.RESERVED_BITS
    offset = 0
    for spec in fmt.fields:
        raw = args >> offset & ((1 << spec.width) - 1)
        offset += spec.width
        if spec.kind is Kind.ENUM:
            if raw not in {member.value for member in spec.shape}:
                return ErrorCause.BAD_FIELD
        elif spec.kind is not Kind.FLAG:
            if Shape.cast(spec.shape).signed and raw >> (spec.width - 1):
                raw -= 1 << spec.width
            low, high = field_range(spec)
            if not low <= raw <= high:
                return ErrorCause.BAD_FIELD
    return None


def build_word(choose) -> int:
    """A word assembled from per-field raw values, ``choose(low, high)`` picking each one.

    Choosing boundary values (0, all ones) gives zero counts, undefined enum values and
    n > 64 far more often than uniformly random words do.
    """
    raw_opcode = choose(0, (1 << OPCODE_WIDTH) - 1)
    word = raw_opcode | choose(0, (1 << len(DEP_FLAGS)) - 1) << DEPS_OFFSET
    if raw_opcode not in {op.value for op in Opcode}:
        return word | choose(0, (1 << (INSN_BITS - ARGS_OFFSET)) - 1) << ARGS_OFFSET
    offset = ARGS_OFFSET
    for spec in FORMAT_BY_OPCODE[Opcode(raw_opcode)].fields:
        word |= choose(0, (1 << spec.width) - 1) << offset
        offset += spec.width
    # Sometimes a reserved bit above the format's fields.
    if offset < INSN_BITS and choose(0, 2) == 0:
        word |= 1 << choose(offset, INSN_BITS - 1)
    return word


@st.composite
def structured_words(draw) -> int:
    return build_word(lambda low, high: draw(st.integers(low, high)))


@settings(max_examples=1500, deadline=None)
@given(word=st.one_of(st.integers(0, (1 << INSN_BITS) - 1), structured_words()))
def test_random_words_decode_or_raise_the_right_cause(word):
    cause = expected_cause(word)
    if cause is None:
        insn = decode(word)
        assert insn.encode() == word
    else:
        with pytest.raises(IllegalInstruction) as info:
            decode(word, pc=0x30)
        assert info.value.cause is cause
        assert info.value.pc == 0x30 and info.value.word == word
        assert "0x30" in str(info.value)


def test_word_builder_reaches_every_cause():
    """The structured words are strong enough: legal words and every cause show up."""
    rng = random.Random(1)

    def choose(low, high):
        return rng.choice([low, high, rng.randint(low, high)])

    seen = {expected_cause(build_word(choose)) for _ in range(3000)}
    assert seen == {None, ErrorCause.ILLEGAL_OPCODE, ErrorCause.BAD_DEPS, ErrorCause.RESERVED_BITS,
                    ErrorCause.BAD_FIELD}


#: An opcode value no instruction uses (the ISA grows into the free values).
_UNDEFINED_OPCODE = max(set(range(1, 16)) - {op.value for op in Opcode})


def _word(opcode: Opcode, deps=(), **raw_fields) -> int:
    """A word with the given raw field values (all other fields zero), from the layout."""
    fmt = FORMAT_BY_OPCODE[opcode]
    word = opcode.value
    for name in deps:
        word |= 1 << (DEPS_OFFSET + DEP_FLAGS.index(name))
    for name, raw in raw_fields.items():
        word |= raw << (ARGS_OFFSET + fmt.layout[name].offset)
    return word


def _legal_fields(opcode: Opcode) -> dict[str, int]:
    """Raw values that make every field legal (counts 1, the rest 0)."""
    return {spec.name: 1 if spec.kind is Kind.COUNT else 0 for spec in FORMAT_BY_OPCODE[opcode].fields}


@pytest.mark.parametrize("word, cause", [
    (0, ErrorCause.ILLEGAL_OPCODE),
    (_UNDEFINED_OPCODE | 1 << 100, ErrorCause.ILLEGAL_OPCODE),
    (_word(Opcode.HALT, deps=["push_next"]), ErrorCause.BAD_DEPS),
    (_word(Opcode.LOAD, deps=["pop_prev"], **_legal_fields(Opcode.LOAD)), ErrorCause.BAD_DEPS),
    (_word(Opcode.STORE, deps=["push_next"], **_legal_fields(Opcode.STORE)), ErrorCause.BAD_DEPS),
    (_word(Opcode.HALT) | 1 << ARGS_OFFSET, ErrorCause.RESERVED_BITS),
    (_word(Opcode.FENCE) | 1 << (INSN_BITS - 1), ErrorCause.RESERVED_BITS),
    # First failure wins: bad deps before reserved bits before bad fields.
    (_word(Opcode.HALT, deps=["pop_prev"]) | 1 << 100, ErrorCause.BAD_DEPS),
    (_word(Opcode.MATMUL, **_legal_fields(Opcode.MATMUL) | {"m": 0}) | 1 << (INSN_BITS - 1),
     ErrorCause.RESERVED_BITS),
    (_word(Opcode.MATMUL, **_legal_fields(Opcode.MATMUL) | {"m": 0}), ErrorCause.BAD_FIELD),
    (_word(Opcode.MATMUL, **_legal_fields(Opcode.MATMUL) | {"n": 65}), ErrorCause.BAD_FIELD),
    (_word(Opcode.LOAD, **_legal_fields(Opcode.LOAD) | {"len": 127}), ErrorCause.BAD_FIELD),
    (_word(Opcode.VECTOR, **_legal_fields(Opcode.VECTOR) | {"op": 8}), ErrorCause.BAD_FIELD),
    (_word(Opcode.TABLE, **_legal_fields(Opcode.TABLE)) | 1 << (ARGS_OFFSET + 16), ErrorCause.RESERVED_BITS),
    (_word(Opcode.CONFIG, **_legal_fields(Opcode.CONFIG) | {"reg": 3}), ErrorCause.BAD_FIELD),
])
def test_illegal_word_examples(word, cause):
    with pytest.raises(IllegalInstruction) as info:
        decode(word)
    assert info.value.cause is cause
    assert expected_cause(word) is cause


def test_legal_field_boundaries_decode():
    """The smallest and largest legal value of every integer field encodes and decodes to itself."""
    for fmt in FORMATS:
        base = {spec.name: next(iter(spec.shape)) if spec.kind is Kind.ENUM else
                False if spec.kind is Kind.FLAG else field_range(spec)[0] for spec in fmt.fields}
        for spec in fmt.fields:
            if spec.kind in (Kind.ENUM, Kind.FLAG):
                continue
            for value in field_range(spec):
                insn = Instruction.make(fmt.opcode, **base | {spec.name: value})
                assert decode(insn.encode()).args[spec.name] == value
                assert assemble(disassemble([insn])) == [insn]


def test_make_fast_path_converts_and_checks_like_the_field_rules():
    """Instruction.make checks common values inline from its tables; everything else goes through the
    per-field rules, so enum names and 0/1 flags still convert, and every bad value (a numpy integer
    too, as before) is still an InstructionError naming the field."""
    import numpy as np

    from braze.isa.encoding import InstructionError, Memory

    plain = Instruction.make(Opcode.LOAD, mem=Memory.SPAD, zero=False, addr=3, rows=4, len=8, dram=64,
                             stride=8, push_next=True)
    converted = Instruction.make("LOAD", mem="spad", zero=0, addr=3, rows=4, len=8, dram=64,
                                 stride=8, push_next=1)
    assert converted == plain and converted.encode() == plain.encode()
    assert type(converted.addr) is int and converted.zero is False
    assert decode(plain.encode()) == plain
    assert plain.with_deps(frozenset({"pop_next"})).deps == {"pop_next"}
    bad = [({"addr": 1 << 16}, "'addr': 65536 is outside 0..65535"), ({"rows": 0}, "'rows': 0 is outside"),
           ({"len": 129}, "'len'"), ({"mem": "dram"}, "'mem': 'dram' is not one of"),
           ({"zero": 2}, "'zero': 2 is not a flag"), ({"addr": 1.0}, "'addr': 1.0 is not an integer"),
           ({"addr": True}, "'addr': True is not an integer"),
           ({"addr": np.int64(3)}, "'addr': np.int64(3) is not an integer"),
           ({"pop_prev": True}, "cannot pop_prev"),
           ({"bogus": 1}, "no field(s) bogus")]
    base = dict(mem=Memory.SPAD, addr=0, rows=1, len=8, dram=0, stride=8)
    for change, message in bad:
        with pytest.raises(InstructionError, match=re.escape(message)):
            Instruction.make(Opcode.LOAD, **(base | change))
    with pytest.raises(InstructionError, match="cannot push_prev"):
        plain.with_deps(frozenset({"push_prev"}))
    with pytest.raises(InstructionError, match="needs field 'rows'"):
        Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=0, len=8, dram=0, stride=8)


def test_with_int_is_make_with_that_field_and_checks_it_the_same_way():
    from braze.isa.encoding import InstructionError, Memory

    base = dict(mem=Memory.SPAD, addr=3, rows=4, len=8, dram=64, stride=8, push_next=True)
    template = Instruction.make(Opcode.LOAD, **base)
    for field, value in (("addr", 900), ("dram", 1 << 20), ("rows", 1)):
        moved = template.with_int(field, value)
        made = Instruction.make(Opcode.LOAD, **(base | {field: value}))
        assert moved == made and moved.encode() == made.encode() and list(moved.args) == list(made.args)
    assert template.with_int("addr", 900).deps == template.deps and template.addr == 3      # a copy
    for field, value, message in (("addr", 1 << 16, "'addr': 65536 is outside 0..65535"),
                                  ("addr", True, "'addr': True is not an integer"),
                                  ("mem", 1, "no integer field 'mem'"), ("bogus", 1, "no integer field")):
        with pytest.raises(InstructionError, match=re.escape(message)):
            template.with_int(field, value)
