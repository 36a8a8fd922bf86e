"""The assembler's syntax (numbers, expressions, symbols, comments) and its error messages."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braze.isa.asm import AsmError, assemble, assemble_bytes, disassemble
from braze.isa.encoding import (
    ALLOWED_DEPS,
    FORMATS,
    INSN_BYTES,
    Activation,
    ConfigReg,
    Instruction,
    Kind,
    Memory,
    Opcode,
    VectorOp,
    encode_program,
    field_range,
)

CONFIG = "config reg=clip_lo value={}"


def value_of(expr: str) -> int:
    """Assemble ``expr`` as the signed 32-bit CONFIG value and read it back."""
    (insn,) = assemble(CONFIG.format(expr))
    return insn.value


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("-42", -42), ("0x7f", 0x7F), ("0X7F", 0x7F), ("0b1010", 0b1010), ("0o17", 0o17),
    ("1_000_000", 1_000_000), ("0xdead_beef & 0xffff", 0xBEEF), ("0x_ff", 0xFF), ("007", 7),
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("10 - 4 - 3", 3), ("2 * -3", -6), ("--5", 5), ("~0", -1),
    ("1 << 4 + 1", 32), ("256 >> 2 >> 1", 32), ("6 & 3 | 8", 10), ("5 ^ 1", 4), ("+7", 7),
    ("7 / 2", 3), ("-7 / 2", -3), ("7 % 3", 1), ("-7 % 3", -1), ("7 / -2", -3),
    ("1 << 31 - 1", 1 << 30), ("(1 << 31) - 1", (1 << 31) - 1), ("-(1 << 31)", -(1 << 31)),
])
def test_numbers_and_expressions(text, value):
    assert value_of(text) == value


def test_random_expressions_match_python():
    """Random +, -, *, &, |, ^ expressions over small numbers evaluate like Python's ints."""
    rng = random.Random(7)
    for _ in range(200):
        expr = str(rng.randint(-50, 50))
        for _ in range(rng.randint(1, 4)):
            expr = f"({expr}) {rng.choice('+-*&|^')} {rng.randint(-50, 50)}"
        assert value_of(expr) == eval(expr)   # only integer literals and these operators


def test_constants_labels_and_comments():
    source = """
        ; a kernel with every kind of statement
        .equ BASE, 0x100        # external base
        ROWS = 2 * 2
        .EQU COLS, ROWS
    start:
        load mem=spad addr=0 rows=ROWS len=COLS dram=BASE stride=COLS push_next
    again: Matmul acc=0 a=0 b=ROWS a_stride=ROWS m=ROWS n=COLS k=ROWS pop_prev push_next
        store mem=acc addr=0 rows=ROWS len=COLS dram=data stride=4*COLS pop_prev
        counters dram=data + end - again
    end:
        halt
    data:
    """
    program = assemble(source)
    expected = [
        Instruction.make(Opcode.LOAD, mem=Memory.SPAD, addr=0, rows=4, len=4, dram=0x100, stride=4,
                         push_next=True),
        Instruction.make(Opcode.MATMUL, acc=0, a=0, b=4, a_stride=4, m=4, n=4, k=4, pop_prev=True,
                         push_next=True),
        Instruction.make(Opcode.STORE, mem=Memory.ACC, addr=0, rows=4, len=4, dram=5 * INSN_BYTES, stride=16,
                         pop_prev=True),
        Instruction.make(Opcode.COUNTERS, dram=5 * INSN_BYTES + 4 * INSN_BYTES - 1 * INSN_BYTES),
        Instruction.make(Opcode.HALT),
    ]
    assert program == expected
    assert assemble_bytes(source) == encode_program(expected)


def test_defaults_enums_and_flags():
    (insn,) = assemble("epilogue src=1 m=2 n=3 dst=4 act=RELU residual res_addr=0\n")
    assert insn.act is Activation.RELU and insn.residual and not insn.bias
    assert insn.out is Memory.SPAD and insn.res_addr == 0 and insn.bias_addr == 0
    (vec,) = assemble("vector op=max dst_mem=acc src1_mem=spad dst=0 src1=1 rows=2 use_imm imm=-5")
    assert vec.op is VectorOp.MAX and vec.src2_mem is Memory.SPAD and vec.use_imm and vec.imm == -5
    (cfg,) = assemble("config reg=out_zp value=-3")
    assert cfg.reg is ConfigReg.OUT_ZP


def test_empty_program():
    assert assemble("") == []
    assert assemble("\n  # nothing\n label:\n") == []
    assert disassemble([]) == ""


def test_disassembly_omits_defaults_and_shows_offsets():
    program = assemble("load mem=acc addr=3 rows=1 len=2 dram=0 stride=0 zero\nhalt\nfence")
    text = disassemble(program)
    assert text.splitlines()[0] == "load mem=acc zero addr=3 rows=1 len=2"
    # A LOAD that reads external memory always shows its address and stride, even when 0.
    (load,) = assemble("load mem=acc addr=3 rows=1 len=2 dram=0 stride=0")
    assert disassemble([load]) == "load mem=acc addr=3 rows=1 len=2 dram=0x0 stride=0\n"
    with_offsets = disassemble(encode_program(program), offsets=True).splitlines()
    assert [line.split("#")[1].strip() for line in with_offsets] == ["0x0000", "0x0010", "0x0020"]
    assert assemble("\n".join(with_offsets)) == program


def test_every_flag_allowed_or_rejected_per_unit():
    """Each dependency flag assembles exactly on the units ALLOWED_DEPS lists."""
    for fmt in FORMATS:
        required = " ".join(
            f"{spec.name}={next(iter(spec.shape)).name.lower()}" if spec.kind is Kind.ENUM
            else f"{spec.name}={field_range(spec)[0]}"
            for spec in fmt.fields if spec.required({}))
        for flag in ("pop_prev", "pop_next", "push_prev", "push_next"):
            source = f"{fmt.mnemonic} {required} {flag}"
            if flag in ALLOWED_DEPS[fmt.unit]:
                assert assemble(source)[0].deps == {flag}
            else:
                with pytest.raises(AsmError) as info:
                    assemble(source)
                assert info.value.column == source.index(flag) + 1
                assert fmt.unit.name.lower() in info.value.message


LOAD = "load mem=spad addr=0 rows=1 len=1 stride=1"    # dram= follows in the tests that need it


@pytest.mark.parametrize("source, line, column, fragments", [
    # unknown mnemonic, with a suggestion or the list
    ("lod mem=spad", 1, 1, ["unknown mnemonic 'lod'", "did you mean 'load'"]),
    ("  xyzzy", 1, 3, ["unknown mnemonic 'xyzzy'", "load", "halt"]),
    # unknown field: the format's fields are listed
    ("halt\nmatmul acc=0 a=0 b=0 a_stride=0 m=1 n=1 k=1 kk=2", 2, 45,
     ["no field 'kk'", "acc, a, b, a_stride, m, n, k, accumulate"]),
    (f"{LOAD} strid=4", 1, len(LOAD) + 2, ["no field 'strid'", "did you mean 'stride'"]),
    # duplicate field
    (f"{LOAD} addr=2", 1, len(LOAD) + 2, ["duplicate field 'addr'", "column 15"]),
    ("fence\n\nstore mem=acc addr=0 rows=1 len=1 dram=0 stride=0 pop_prev pop_prev", 3, 60,
     ["duplicate field 'pop_prev'"]),
    # missing required field(s), at the mnemonic
    ("  load mem=spad addr=0", 1, 3, ["missing required fields 'rows', 'len'"]),
    ("config value=1", 1, 1, ["missing required field 'reg'"]),
    # out of range: the legal range from field_range
    ("load mem=spad addr=0 rows=1 len=65 dram=0 stride=1", 1, 33, ["65 out of range", "'len'", "1..64"]),
    ("load mem=spad addr=0 rows=0 len=1 dram=0 stride=1", 1, 27, ["0 out of range", "'rows'", "1..65535"]),
    ("config reg=clip_lo value=1 << 31", 1, 26, ["2147483648 out of range", "-2147483648..2147483647"]),
    ("vector op=shr dst_mem=acc src1_mem=acc dst=0 src1=0 rows=1 shift=32", 1, 66, ["0..31"]),
    (f"{LOAD} dram=-1", 1, len(LOAD) + 7, ["-1 out of range", "0..4294967295"]),
    # bad enum value: members listed
    ("load mem=dram addr=0 rows=1 len=1", 1, 10, ["bad value 'dram'", "spad, acc"]),
    ("epilogue src=0 m=1 n=1 dst=0 act=1", 1, 34, ["bad value '1'", "none, relu, clip"]),
    ("vector op= dst_mem=acc", 1, 12, ["bad value 'dst_mem'", "add, sub, mul"]),
    # bad number / expression
    (f"{LOAD} dram=0x", 1, len(LOAD) + 7, ["bad hexadecimal number '0x'"]),
    (f"{LOAD} dram=12abc", 1, len(LOAD) + 7, ["bad decimal number '12abc'"]),
    (f"{LOAD} dram=0b102", 1, len(LOAD) + 7, ["bad binary number"]),
    (f"{LOAD} dram=1__0", 1, len(LOAD) + 7, ["bad decimal number"]),
    (f"{LOAD} dram=(1 + 2", 1, len(LOAD) + 13, [f"expected ')' to close the '(' at column {len(LOAD) + 7}"]),
    (f"{LOAD} dram=1 +", 1, len(LOAD) + 10, ["expected a number, symbol or '('", "end of line"]),
    (f"{LOAD} dram=*3", 1, len(LOAD) + 7, ["expected a number, symbol or '('", "'*'"]),
    (f"{LOAD} dram=4 / (2 - 2)", 1, len(LOAD) + 9, ["division by zero"]),
    (f"{LOAD} dram=1 % 0", 1, len(LOAD) + 9, ["division by zero"]),
    (f"{LOAD} dram=1 << 1000", 1, len(LOAD) + 9, ["shift count 1000"]),
    (f"{LOAD} dram=1 >> -1", 1, len(LOAD) + 9, ["shift count -1"]),
    (f"{LOAD} dram=$1", 1, len(LOAD) + 7, ["unexpected character '$'"]),
    # undefined symbol, and a constant used before its definition
    (f"{LOAD} dram=nowhere + 1", 1, len(LOAD) + 7, ["undefined symbol 'nowhere'"]),
    (f"{LOAD} dram=LATER\nLATER = 4", 1, len(LOAD) + 7, ["'LATER' is used before its definition at line 2"]),
    ("A = B\nB = 1", 1, 5, ["'B' is used before its definition"]),
    (f"{LOAD} dram=Base\nBASE = 4", 1, len(LOAD) + 7, ["undefined symbol 'Base'"]),
    # duplicate label / constant
    ("top:\nhalt\ntop: fence", 3, 1, ["duplicate label 'top'", "line 1"]),
    ("N = 1\n.equ N, 2", 2, 6, ["duplicate constant 'N'", "constant at line 1"]),
    ("x: halt\nx = 3", 2, 1, ["duplicate constant 'x'", "label at line 1"]),
    # dependency flag not allowed on the unit
    ("halt push_next", 1, 6, ["'push_next' not allowed", "control unit"]),
    (f"{LOAD} pop_prev", 1, len(LOAD) + 2, ["'pop_prev' not allowed", "load unit", "pop_next, push_next"]),
    ("store mem=acc addr=0 rows=1 len=1 dram=0 stride=0 push_next", 1, 51,
     ["'push_next' not allowed", "store unit"]),
    # flags and fields written the wrong way
    (f"{LOAD} zero=1", 1, len(LOAD) + 2, ["'zero' is a flag", "bare word"]),
    (f"{LOAD} push_next=1", 1, len(LOAD) + 2, ["'push_next' is written as a bare word"]),
    ("load mem=spad addr rows=1 len=1", 1, 15, ["field 'addr' needs a value"]),
    # trailing garbage
    ("halt )", 1, 6, ["unexpected ')'"]),
    (f"{LOAD} dram=1 2", 1, len(LOAD) + 9, ["unexpected '2'"]),
    (f"{LOAD}, dram=1", 1, len(LOAD) + 1, ["unexpected ','"]),
    ("epilogue src=0 m=1 n=1 dst=0 act=relu+1", 1, 38, ["unexpected '+'"]),
    (".equ A, 1 2", 1, 11, ["unexpected '2' at end of statement"]),
    ("B = 1 )", 1, 7, ["unexpected ')'"]),
    # malformed statements and directives
    ("42 halt", 1, 1, ["expected a mnemonic, label or directive", "'42'"]),
    (".word 3", 1, 1, ["unknown directive '.word'", ".equ"]),
    (".equ 3, 4", 1, 6, ["expected a constant name"]),
    (".equ A 4", 1, 8, ["expected ',' after the constant name"]),
])
def test_errors_are_located(source, line, column, fragments):
    with pytest.raises(AsmError) as info:
        assemble(source, filename="prog.s")
    error = info.value
    assert (error.file, error.line, error.column) == ("prog.s", line, column), error
    for fragment in fragments:
        assert fragment in error.message, (fragment, error.message)
    assert str(error).startswith(f"prog.s:{line}:{column}: ")


def test_errors_point_at_the_right_line_of_a_long_program():
    rng = random.Random(3)
    lines = ["halt"] * 40
    bad = rng.randrange(40)
    lines[bad] = "halt pop_prev"
    with pytest.raises(AsmError) as info:
        assemble("\n".join(lines))
    assert info.value.line == bad + 1 and info.value.file == "<input>"


def test_labels_count_only_instructions():
    """A label's value is 16 x the number of instructions before it (constants, comments, blank
    lines and other labels take no space)."""
    rng = random.Random(5)
    source, expected = [], {}
    count = 0
    for index in range(60):
        kind = rng.choice(["insn", "label", "const", "blank"])
        if kind == "insn":
            source.append("fence")
            count += 1
        elif kind == "label":
            source.append(f"l{index}:")
            expected[f"l{index}"] = count * INSN_BYTES
        elif kind == "const":
            source.append(f"c{index} = {index}")
        else:
            source.append("   # nothing")
    source += [f"counters dram={name}" for name in expected]
    program = assemble("\n".join(source))
    assert [insn.dram for insn in program[count:]] == list(expected.values())



@pytest.mark.parametrize("expr", ["(" * 3000 + "1" + ")" * 3000, "-" * 3000 + "1", "+1" * 3000])
def test_huge_expressions_are_rejected_cleanly(expr):
    with pytest.raises(AsmError, match="expression too complex"):
        assemble(CONFIG.format(expr))


SOUP = st.lists(st.sampled_from(
    ["load", "matmul", "halt", "vector", "mem", "=", "spad", "acc", "op", "max", "rows", "len", "addr", "k",
     "n", "m", "1", "0x10", "-", "+", "*", "/", "%", "<<", ">>", "(", ")", "~", "&", "|", ":", ",", ".equ",
     "X", "X:", "push_next", "pop_prev", "zero", "accumulate", "#", ";", "\n", " ", "0b2", "1_",
     "99999999999"]),
    max_size=30).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=60), SOUP))
def test_any_text_assembles_or_raises_asm_error(text):
    """Whatever the input, the assembler either succeeds or raises a located AsmError."""
    try:
        program = assemble(text)
    except AsmError as error:
        assert error.line >= 1 and error.column >= 1
    else:
        assert assemble_bytes(disassemble(program)) == encode_program(program)


@pytest.mark.parametrize(("source", "missing"), [
    ("load mem=spad addr=0 rows=1 len=1", "'dram', 'stride' (required without 'zero')"),
    ("load mem=spad addr=0 rows=1 len=1 dram=0x40", "'stride' (required without 'zero')"),
    ("epilogue src=0 m=1 n=1 dst=0 bias", "'bias_addr' (required with 'bias')"),
    ("epilogue src=0 m=1 n=1 dst=0 requant residual res_addr=2", "'quant_addr' (required with 'requant')"),
])
def test_fields_a_flag_makes_required_must_be_given(source, missing):
    """Defect 3: a LOAD without dram=/stride= assembled with address 0 and stride 0."""
    with pytest.raises(AsmError, match=re.escape(f"is missing required field{'s' if ',' in missing else ''} "
                                                 f"{missing}")) as caught:
        assemble(source)
    assert (caught.value.line, caught.value.column) == (1, 1)
    # Without the flag that needs them (a zero-filling LOAD, an EPILOGUE without the stage) they
    # keep their defaults.
    assert assemble("load mem=spad zero addr=0 rows=1 len=1")[0].dram == 0
    assert assemble("epilogue src=0 m=1 n=1 dst=0")[0].bias_addr == 0
