"""The Braze instruction set: encodings, configurations, assembler, reference model."""

from .asm import assemble, assemble_bytes, disassemble
from .config import PRESETS, Config
from .counters import COUNTERS, SNAPSHOT_BYTES, Counter, CounterSpec, parse_snapshot
from .encoding import (
    DEP_FLAGS,
    FORMATS,
    INSN_BITS,
    INSN_BYTES,
    INSTRUCTION,
    Activation,
    ConfigReg,
    ErrorCause,
    Format,
    Instruction,
    Memory,
    Opcode,
    Unit,
    VectorOp,
    decode,
    decode_program,
    encode_program,
)
from .errors import AsmError, BrazeError, ConfigError, ExecutionError, IllegalInstruction

__all__ = [
    "assemble", "assemble_bytes", "disassemble",
    "PRESETS", "Config", "COUNTERS", "SNAPSHOT_BYTES", "Counter", "CounterSpec", "parse_snapshot",
    "DEP_FLAGS", "FORMATS", "INSN_BITS", "INSN_BYTES", "INSTRUCTION", "Activation", "ConfigReg",
    "ErrorCause", "Format", "Instruction", "Memory", "Opcode", "Unit", "VectorOp", "decode",
    "decode_program", "encode_program", "AsmError", "BrazeError", "ConfigError", "ExecutionError",
    "IllegalInstruction",
]
