"""Errors shared by every layer of Braze.

Every error a user can provoke with bad input derives from :class:`BrazeError`,
so that the command line can print it as one line instead of a traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class BrazeError(Exception):
    """Base class of every error Braze reports about its input."""


class UsageError(BrazeError, ValueError):
    """An argument of a command or of a public function is out of range or of the wrong kind.

    Attributes
    ----------
    prog : str or None
        The command whose argument it was (``"braze verify"``), when a command line parsed it.
    """

    def __init__(self, message: str, *, prog: str | None = None):
        self.prog = prog
        super().__init__(message)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose usage errors raise :class:`UsageError` instead of exiting.

    The ``braze`` command line and the benchmarks it runs parse their arguments with it, so that a
    bad argument is reported like every other user error: one line naming the command, exit status 2.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)", prog=self.prog)


class ConfigError(BrazeError, ValueError):
    """An accelerator configuration is invalid."""


class AsmError(BrazeError):
    """Malformed assembly, located by file, line and column.

    Parameters
    ----------
    message : str
        What was wrong or what was expected.
    file, line, column : str, int, int
        Where; ``line`` and ``column`` count from 1.
    """

    def __init__(self, message: str, *, file: str = "<input>", line: int = 0, column: int = 0):
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(f"{file}:{line}:{column}: {message}")


class IllegalInstruction(BrazeError):
    """A binary instruction word that is not a legal encoding.

    Attributes
    ----------
    cause : ErrorCause
        The same cause the hardware reports in its status register.
    pc : int or None
        Byte address of the instruction in external memory (its offset in the
        program for :func:`~braze.isa.decode_program`), when known.
    """

    def __init__(self, cause, detail: str, *, pc: int | None = None, word: int | None = None):
        self.cause = cause
        self.detail = detail
        self.pc = pc
        self.word = word
        where = f"instruction at byte 0x{pc:x}" if pc is not None else "instruction"
        raw = f" (word 0x{word:032x})" if word is not None else ""
        super().__init__(f"{where}{raw}: {cause.name.lower()}: {detail}")


class ExecutionError(BrazeError):
    """A legal instruction that cannot execute on this machine.

    Raised for out-of-range addresses, tiles larger than the array, data
    races between decoupled units and dependency-token deadlocks.  ``cause``
    is the :class:`~braze.isa.ErrorCause` the hardware reports.
    """

    def __init__(self, cause, detail: str, *, pc: int | None = None):
        self.cause = cause
        self.detail = detail
        self.pc = pc
        where = f"instruction at byte 0x{pc:x}" if pc is not None else "program"
        super().__init__(f"{where}: {cause.name.lower()}: {detail}")
