"""Assembler and disassembler of Braze programs.

Every mnemonic, field, enum value and flag is read from :data:`~braze.isa.encoding.FORMATS`;
nothing here is specific to one opcode.

Syntax
------
One statement per line; ``#`` and ``;`` start a comment that runs to the end of the line.

- **Instruction**: ``mnemonic field=expr ... flag ...``.  Mnemonics, field names, flags and
  enum values are case-insensitive.  Fields come in any order; an omitted field takes its
  default, and fields without a default are required.  Enum fields take a member's name
  (``mem=acc``, ``act=relu``, ``op=max``, ``reg=clip_lo``).  Flag fields and the dependency
  flags ``pop_prev``, ``pop_next``, ``push_prev``, ``push_next`` are bare words; a dependency
  flag is only accepted where the instruction's unit has that neighbour.  Some fields are
  required only with a flag: ``dram`` and ``stride`` of a LOAD unless it has ``zero``,
  ``bias_addr``, ``quant_addr`` and ``res_addr`` of an EPILOGUE with ``bias``, ``requant``,
  ``residual``.
- **Label**: ``name:``, alone or before an instruction on the same line.  Its value is the
  byte offset of the next instruction (16 bytes per instruction); labels may be used before
  they are defined.
  A BRANCH's ``offset`` counts instructions, so a branch back to a label reads
  ``back: branch cond=ne a=1 offset=(loop - back) / 16``.
- **Constant**: ``.equ NAME, expr`` or ``NAME = expr``.  A constant must be defined before
  it is used; a name is defined at most once (labels and constants share one namespace).
  Symbol names are case-sensitive.  The caller may predefine constants (``defines=``;
  ``braze asm --config NAME`` predefines the configuration's :meth:`~braze.isa.Config.asm_constants`
  and ``-D NAME=VALUE`` any other).
- **Numbers**: decimal, hexadecimal ``0x``, binary ``0b`` or octal ``0o``, with optional
  ``_`` separators; a leading ``-`` negates.
- **Expressions** over numbers, constants and labels with parentheses and, from loosest to
  tightest binding, ``|``, ``^``, ``&``, ``<< >>``, ``+ -``, ``* / %``, and unary
  ``- + ~``.  Arithmetic is on unbounded integers; ``/`` and ``%`` truncate toward zero as
  in C.  The result must lie in the field's legal range.

Example::

    .equ TILE, 4
    start:
        load mem=spad addr=0 rows=TILE len=4 dram=0x1000 stride=4 push_next
        matmul acc=0 a=0 b=TILE a_stride=TILE m=TILE n=4 k=TILE pop_prev push_next
        store mem=acc addr=0 rows=TILE len=4 dram=0x2000 stride=16 pop_prev
        halt
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .encoding import (
    ALLOWED_DEPS,
    DEP_FLAGS,
    FORMAT_BY_MNEMONIC,
    INSN_BYTES,
    FieldSpec,
    Format,
    Instruction,
    InstructionError,
    Kind,
    decode_program,
    encode_program,
    field_range,
)
from .errors import AsmError

__all__ = ["AsmError", "assemble", "assemble_bytes", "decode_source", "disassemble", "format_instruction",
           "read_source"]

# Shift counts beyond this are certainly mistakes and would build enormous integers.
_MAX_SHIFT = 256
# Operators and parentheses in one expression: bounds the recursion of parsing and evaluation.
_MAX_OPERATORS = 128

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>[\#;].*)
  | (?P<number>[0-9][0-9A-Za-z_]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<directive>\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><<|>>|[-+*/%&|^~()=,:])
""", re.VERBOSE)

# Binding strength of binary operators, as in C.
_BINARY_PRECEDENCE = {"|": 1, "^": 2, "&": 3, "<<": 4, ">>": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str          # "number", "name", "directive", "op" or "end"
    text: str
    line: int
    column: int        # 1-based

    def describe(self) -> str:
        return "end of line" if self.kind == "end" else repr(self.text)


def _tokenize(text: str, line: int, file: str) -> list[_Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise AsmError(f"unexpected character {text[pos]!r}", file=file, line=line, column=pos + 1)
        kind = match.lastgroup
        if kind == "comment":
            break
        if kind != "space":
            tokens.append(_Token(kind, match.group(), line, pos + 1))
        pos = match.end()
    tokens.append(_Token("end", "", line, pos + 1))
    return tokens


def _parse_number(token: _Token, file: str) -> int:
    text = token.text.lower()
    base = {"0x": 16, "0b": 2, "0o": 8}.get(text[:2], 10)
    # Python's rules: "0x_ff" and "1_000" are fine, "1__0", "1_" and "0x" are not.
    digits = text[2:].removeprefix("_") if base != 10 else text
    try:
        if not digits or digits.endswith("_"):
            raise ValueError
        return int(digits, base)
    except ValueError:
        kinds = {16: "hexadecimal", 2: "binary", 8: "octal", 10: "decimal"}
        raise AsmError(f"bad {kinds[base]} number {token.text!r}", file=file, line=token.line,
                       column=token.column) from None


# An expression is parsed into a function of the symbol table; evaluation is deferred so that
# labels can be used before their definition.
_Expr = Callable[[dict[str, int]], int]


@dataclasses.dataclass(frozen=True)
class _Symbol:
    value: int | None   # a label's byte offset; constants are evaluated in the second pass
    line: int
    kind: str           # "label" or "constant"


class _LineParser:
    """Recursive-descent parser over the tokens of one line."""

    def __init__(self, tokens: list[_Token], file: str, symbols: dict[str, _Symbol]):
        self.tokens = tokens
        self.pos = 0
        self.file = file
        self.symbols = symbols
        self.operators = 0

    def error(self, message: str, token: _Token | None = None) -> AsmError:
        token = token or self.peek()
        return AsmError(message, file=self.file, line=token.line, column=token.column)

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def next(self) -> _Token:
        token = self.peek()
        self.pos += 1
        return token

    def at(self, kind: str, text: str | None = None, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == kind and (text is None or token.text == text)

    def expect_op(self, text: str, what: str) -> _Token:
        if not self.at("op", text):
            raise self.error(f"expected {what}, found {self.peek().describe()}")
        return self.next()

    def expect_end(self) -> None:
        if not self.at("end"):
            raise self.error(f"unexpected {self.peek().describe()} at end of statement")

    def count_operator(self, token: _Token) -> None:
        self.operators += 1
        if self.operators > _MAX_OPERATORS:
            raise self.error(f"expression too complex (more than {_MAX_OPERATORS} operators)", token)

    # expr := unary (binop unary)*, by precedence climbing
    def expression(self, min_precedence: int = 1) -> _Expr:
        left = self.unary()
        while self.at("op") and _BINARY_PRECEDENCE.get(self.peek().text, 0) >= min_precedence:
            op_token = self.next()
            self.count_operator(op_token)
            right = self.expression(_BINARY_PRECEDENCE[op_token.text] + 1)
            left = self._binary(op_token, left, right)
        return left

    def unary(self) -> _Expr:
        token = self.peek()
        if token.kind == "op" and token.text in ("-", "+", "~"):
            self.next()
            self.count_operator(token)
            operand = self.unary()
            if token.text == "-":
                return lambda symbols: -operand(symbols)
            if token.text == "~":
                return lambda symbols: ~operand(symbols)
            return operand
        if token.kind == "number":
            self.next()
            value = _parse_number(token, self.file)
            return lambda symbols: value
        if token.kind == "name":
            self.next()
            return self._symbol(token)
        if token.kind == "op" and token.text == "(":
            self.next()
            self.count_operator(token)
            inner = self.expression()
            self.expect_op(")", "')' to close the '(' at column " + str(token.column))
            return inner
        raise self.error(f"expected a number, symbol or '(', found {token.describe()}")

    def _symbol(self, token: _Token) -> _Expr:
        name = token.text

        def value(symbols: dict[str, int]) -> int:
            if name in symbols:
                return symbols[name]
            known = self.symbols.get(name)
            if known is not None:
                raise self.error(f"constant {name!r} is used before its definition at line {known.line}",
                                 token)
            raise self.error(f"undefined symbol {name!r}", token)

        return value

    def _binary(self, token: _Token, left: _Expr, right: _Expr) -> _Expr:
        op = token.text

        def value(symbols: dict[str, int]) -> int:
            a, b = left(symbols), right(symbols)
            if op in ("/", "%"):
                if b == 0:
                    raise self.error("division by zero", token)
                quotient = abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
                return quotient if op == "/" else a - b * quotient
            if op in ("<<", ">>"):
                if not 0 <= b <= _MAX_SHIFT:
                    raise self.error(f"shift count {b} is outside 0..{_MAX_SHIFT}", token)
                return a << b if op == "<<" else a >> b
            return {"|": a | b, "^": a ^ b, "&": a & b, "+": a + b, "-": a - b, "*": a * b}[op]

        return value


@dataclasses.dataclass
class _Operand:
    spec: FieldSpec
    value_token: _Token        # first token of the value, for range errors
    evaluate: _Expr


@dataclasses.dataclass
class _InsnStatement:
    fmt: Format
    token: _Token              # the mnemonic
    values: dict[str, Any]     # enum and flag fields, already resolved
    operands: list[_Operand]   # integer fields, evaluated in the second pass
    deps: set[str]


@dataclasses.dataclass
class _ConstStatement:
    name: str
    evaluate: _Expr


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "none"


def _parse_instruction(parser: _LineParser, mnemonic: _Token) -> _InsnStatement:
    key = mnemonic.text.lower()
    fmt = FORMAT_BY_MNEMONIC.get(key)
    if fmt is None:
        close = difflib.get_close_matches(key, list(FORMAT_BY_MNEMONIC), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"mnemonics are {_names(FORMAT_BY_MNEMONIC)}"
        raise parser.error(f"unknown mnemonic {mnemonic.text!r}; {hint}", mnemonic)
    statement = _InsnStatement(fmt, mnemonic, {}, [], set())
    seen: dict[str, _Token] = {}
    field_names = [spec.name for spec in fmt.fields]
    allowed_deps = ALLOWED_DEPS[fmt.unit]
    while not parser.at("end"):
        if not parser.at("name"):
            raise parser.error(f"unexpected {parser.peek().describe()}: expected field=value or a flag "
                               f"after {fmt.mnemonic}")
        token = parser.next()
        name = token.text.lower()
        has_value = parser.at("op", "=")
        if name in seen:
            raise parser.error(f"duplicate field {name!r} (first given at column {seen[name].column})", token)
        seen[name] = token
        if name in DEP_FLAGS:
            if has_value:
                raise parser.error(f"dependency flag {name!r} is written as a bare word, without '='", token)
            if name not in allowed_deps:
                raise parser.error(
                    f"flag {name!r} not allowed: {fmt.mnemonic} runs on the {fmt.unit.name.lower()} unit, "
                    f"whose dependency flags are {_names(f for f in DEP_FLAGS if f in allowed_deps)}", token)
            statement.deps.add(name)
            continue
        if name not in field_names:
            close = difflib.get_close_matches(name, field_names + list(allowed_deps), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise parser.error(
                f"{fmt.mnemonic} has no field {token.text!r}; {hint}its fields are {_names(field_names)}"
                f" and its dependency flags {_names(f for f in DEP_FLAGS if f in allowed_deps)}", token)
        spec = fmt.field(name)
        if spec.kind is Kind.FLAG:
            if has_value:
                raise parser.error(f"{name!r} is a flag: write it as a bare word, without '='", token)
            statement.values[name] = True
            continue
        if not has_value:
            raise parser.error(f"field {name!r} needs a value: {name}=...", token)
        parser.next()   # '='
        value_token = parser.peek()
        if spec.kind is Kind.ENUM:
            members = [m.name.lower() for m in spec.shape]
            if value_token.kind != "name" or value_token.text.upper() not in spec.shape.__members__:
                raise parser.error(f"bad value {value_token.describe()} for {fmt.mnemonic} field {name!r}: "
                                   f"expected one of {_names(members)}", value_token)
            parser.next()
            statement.values[name] = spec.shape[value_token.text.upper()]
            continue
        statement.operands.append(_Operand(spec, value_token, parser.expression()))
    missing = [spec.name for spec in fmt.fields if spec.name not in seen and spec.required(statement.values)]
    if missing:
        conditions = sorted({f" (required {'with' if spec.required_if[1] else 'without'} "
                             f"{spec.required_if[0]!r})" for spec in fmt.fields
                             if spec.name in missing and spec.default is not None})
        raise parser.error(f"{fmt.mnemonic} is missing required field{'s' if len(missing) > 1 else ''} "
                           f"{_names(repr(name) for name in missing)}{''.join(conditions)}", mnemonic)
    return statement


def _parse(text: str, file: str, defines: Mapping[str, int]):
    """First pass: statements, and the values of labels (byte offsets) and predefined constants."""
    statements: list[tuple[_LineParser, _InsnStatement | _ConstStatement]] = []
    symbols: dict[str, _Symbol] = {name: _Symbol(value, 0, "predefined") for name, value in defines.items()}
    insn_count = 0

    def define(token: _Token, kind: str, parser: _LineParser, value: int | None = None) -> None:
        previous = symbols.get(token.text)
        if previous is not None:
            where = "predefined (by the assembler's caller)" if previous.kind == "predefined" else \
                f"already defined as a {previous.kind} at line {previous.line}"
            raise parser.error(f"duplicate {kind} {token.text!r}: {where}", token)
        symbols[token.text] = _Symbol(value, token.line, kind)

    for line_number, line in enumerate(text.splitlines(), start=1):
        parser = _LineParser(_tokenize(line, line_number, file), file, symbols)
        while parser.at("name") and parser.at("op", ":", ahead=1):
            define(parser.next(), "label", parser, insn_count * INSN_BYTES)
            parser.next()
        if parser.at("end"):
            continue
        head = parser.peek()
        if head.kind == "directive":
            parser.next()
            if head.text.lower() != ".equ":
                raise parser.error(f"unknown directive {head.text!r}; the only directive is .equ", head)
            if not parser.at("name"):
                raise parser.error(f"expected a constant name after .equ, found {parser.peek().describe()}")
            name = parser.next()
            parser.expect_op(",", "',' after the constant name")
            statement = _ConstStatement(name.text, parser.expression())
            parser.expect_end()
            define(name, "constant", parser)
        elif head.kind == "name" and parser.at("op", "=", ahead=1):
            name = parser.next()
            parser.next()
            statement = _ConstStatement(name.text, parser.expression())
            parser.expect_end()
            define(name, "constant", parser)
        elif head.kind == "name":
            statement = _parse_instruction(parser, parser.next())
            insn_count += 1
        else:
            raise parser.error(f"expected a mnemonic, label or directive, found {head.describe()}", head)
        statements.append((parser, statement))
    return statements, symbols


def _check_defines(defines: Mapping[str, int] | None) -> dict[str, int]:
    checked = {}
    for name, value in (defines or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise AsmError(f"predefined constant name {name!r} is not a symbol name")
        if not isinstance(value, int) or isinstance(value, bool):
            raise AsmError(f"predefined constant {name} = {value!r} is not an integer")
        checked[name] = value
    return checked


def assemble(text: str, *, filename: str = "<input>", defines: Mapping[str, int] | None = None
             ) -> list[Instruction]:
    """Assemble source text into instructions.

    Parameters
    ----------
    text : str
        The program (syntax in this module's docstring).
    filename : str
        Names the source in error messages.
    defines : mapping of str to int, optional
        Constants defined before the first line (``braze asm -D NAME=VALUE``, or a configuration's
        :meth:`~braze.isa.Config.asm_constants`); the source may not define them again.

    Raises
    ------
    AsmError
        For any malformed input, located by file, line and column.
    """
    statements, symbols = _parse(text, filename, _check_defines(defines))
    values = {name: symbol.value for name, symbol in symbols.items()
              if symbol.kind in ("label", "predefined")}
    program = []
    for parser, statement in statements:
        if isinstance(statement, _ConstStatement):
            values[statement.name] = statement.evaluate(values)
            continue
        fields = dict(statement.values)
        for operand in statement.operands:
            value = operand.evaluate(values)
            low, high = field_range(operand.spec)
            if not low <= value <= high:
                raise parser.error(f"value {value} out of range for {statement.fmt.mnemonic} field "
                                   f"{operand.spec.name!r}: legal range is {low}..{high}",
                                   operand.value_token)
            fields[operand.spec.name] = value
        try:
            program.append(Instruction.make(statement.fmt.opcode, **fields,
                                            **{name: True for name in statement.deps}))
        except InstructionError as exc:   # every check above should have caught it first
            raise parser.error(str(exc), statement.token) from None
    return program


def read_source(path: str | os.PathLike) -> str:
    """The text of an assembly source file, which must be UTF-8.

    Raises
    ------
    AsmError
        At the line and column of the first byte that is not UTF-8 (``OSError`` if the file
        cannot be read).
    """
    return decode_source(Path(path).read_bytes(), filename=str(path))


def decode_source(data: bytes, *, filename: str = "<input>") -> str:
    """Assembly source bytes as text; a byte that is not UTF-8 is an :class:`AsmError` at its line, column."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        # The bytes before the bad one on its line are valid UTF-8: count them as characters.
        column = len(data[line_start:error.start].decode("utf-8")) + 1
        raise AsmError(f"byte 0x{data[error.start]:02x} is not UTF-8 text (assembly source must be UTF-8)",
                       file=filename, line=data.count(b"\n", 0, error.start) + 1, column=column) from None


def assemble_bytes(text: str, *, filename: str = "<input>",
                   defines: Mapping[str, int] | None = None) -> bytes:
    """Assemble source text into the bytes the machine fetches."""
    return encode_program(assemble(text, filename=filename, defines=defines))


def _format_value(spec: FieldSpec, value: Any) -> str:
    if spec.kind is Kind.ENUM:
        return value.name.lower()
    if spec.kind is Kind.DRAM:
        return f"0x{value:x}"
    return str(value)


def format_instruction(insn: Instruction) -> str:
    """One instruction in assembly syntax: fields that are required or differ from their
    default, and flags that are set, in format order, then dependency flags."""
    parts = [insn.format.mnemonic]
    for spec in insn.format.fields:
        value = insn.args[spec.name]
        if spec.kind is Kind.FLAG:
            if value:
                parts.append(spec.name)
        elif value != spec.default or spec.required(insn.args):
            parts.append(f"{spec.name}={_format_value(spec, value)}")
    parts.extend(name for name in DEP_FLAGS if name in insn.deps)
    return " ".join(parts)


def disassemble(program: bytes | list[Instruction], *, offsets: bool = False) -> str:
    """A program as assembly text that re-assembles to the same bytes.

    Parameters
    ----------
    program : bytes or list of Instruction
        Bytes are decoded first; an illegal word raises
        :class:`~braze.isa.errors.IllegalInstruction` naming its byte offset.
    offsets : bool
        Append a ``# 0x0010`` comment with each instruction's byte offset.
    """
    if isinstance(program, bytes | bytearray | memoryview):
        program = decode_program(bytes(program))
    lines = [format_instruction(insn) for insn in program]
    if offsets:
        width = max((len(line) for line in lines), default=0)
        lines = [f"{line:<{width}}  # 0x{index * INSN_BYTES:04x}" for index, line in enumerate(lines)]
    return "".join(line + "\n" for line in lines)
