"""The generated ISA reference: up to date, deterministic and faithful to the single source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from braze.isa.asm import assemble
from braze.isa.config import PRESETS
from braze.isa.counters import COUNTERS
from braze.isa.doc import isa_markdown
from braze.isa.encoding import (
    ALLOWED_DEPS,
    CONFIG_REG_DOC,
    DEP_FLAGS,
    ERROR_CAUSE_DOC,
    FORMATS,
    INSN_BITS,
    Activation,
    Kind,
    Memory,
    Opcode,
    VectorOp,
    field_range,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = isa_markdown()


def test_committed_document_is_current():
    committed = (ROOT / "docs" / "isa.md").read_text()
    assert committed == DOC, "docs/isa.md is stale: run `braze isa-doc > docs/isa.md`"


def test_output_is_deterministic_across_processes():
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", "from braze.isa.doc import isa_markdown; "
                             "import sys; sys.stdout.write(isa_markdown())"],
                            capture_output=True, text=True, env=env, check=True)
    assert result.stdout == DOC


def opcode_section(mnemonic: str) -> str:
    match = re.search(rf"^### `{mnemonic}`: .*?(?=^##)", DOC, re.MULTILINE | re.DOTALL)
    assert match, f"no section for {mnemonic}"
    return match.group()


def table_rows(section: str) -> dict[str, list[str]]:
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) > 1:
            rows[cells[0].strip("`")] = cells[1:]
    return rows


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.mnemonic)
def test_opcode_section(fmt):
    section = opcode_section(fmt.mnemonic)
    assert fmt.summary in section and fmt.doc in section
    assert f"Opcode {fmt.opcode.value}, {fmt.unit.name.lower()} unit" in section
    for flag in DEP_FLAGS:
        assert (f"`{flag}`" in section.split("\n\n")[1]) == (flag in ALLOWED_DEPS[fmt.unit])
    rows = table_rows(section)
    assert list(rows) == [spec.name for spec in fmt.fields]
    # Bit ranges computed independently: fields packed LSB-first after opcode and deps.
    bit = 4 + len(DEP_FLAGS)
    for spec in fmt.fields:
        bits, width, kind, default, legal, description = rows[spec.name]
        expected_bits = str(bit) if spec.width == 1 else f"{bit}..{bit + spec.width - 1}"
        assert (bits, width, kind, description) == (expected_bits, str(spec.width), spec.kind.value, spec.doc)
        if spec.kind not in (Kind.ENUM, Kind.FLAG):
            low, high = field_range(spec)
            assert legal in (f"{low}..{high}", f"{low:#x}..{high:#x}")
        if spec.kind is Kind.ENUM:
            assert legal == ", ".join(f"`{member.name.lower()}`" for member in spec.shape)
        assert (default == "required") == (spec.default is None and spec.kind is not Kind.FLAG)
        bit += spec.width
    assert f"{bit}..{INSN_BITS - 1} are reserved" in section
    example = re.search(r"Example:\n\n```\n(.*)\n```", section).group(1)
    (insn,) = assemble(example)
    assert insn.opcode is fmt.opcode


def test_enums_counters_and_presets_are_listed():
    for enum_cls in (Opcode, Memory, Activation, VectorOp):
        for member in enum_cls:
            assert f"| {member.value} | `{member.name.lower()}` |" in DOC
    for reg, doc in CONFIG_REG_DOC.items():
        assert f"| {reg.value} | `{reg.name.lower()}` | {doc} |" in DOC
    for cause, doc in ERROR_CAUSE_DOC.items():
        assert f"| {cause.value} | `{cause.name.lower()}` | {doc} |" in DOC
    for index, spec in enumerate(COUNTERS):
        exact = "yes" if spec.exact else "no"
        assert f"\n| {index} | `{spec.name}` | 0x{index * 8:03x} | {exact} | {spec.doc} |\n" in DOC
    for name, config in PRESETS.items():
        values = (name, config.rows, config.cols, config.spad_bytes, config.spad_rows, config.spad_banks,
                  config.acc_bytes, config.acc_rows, config.acc_banks, config.dma_bus_bits)
        assert "\n| " + " | ".join(map(str, values)) + " |\n" in DOC


def test_dependency_rules_and_syntax_are_included():
    assert "### Dependencies" in DOC and "*barriers*" in DOC
    assert "## Assembly language" in DOC and ".equ NAME, expr" in DOC
    # The syntax section's example is valid assembly.
    block = re.search(r"## Assembly language.*?```\n(.*?)```", DOC, re.DOTALL).group(1)
    assert len(assemble(block)) >= 2
