"""The kernel cache: generated kernels by (fused-operator signature, shapes, dtypes, configuration).

Kernels are generated at a canonical placement (operands packed from
address 0) and relocated by the lowering, so a cached kernel serves every
model that needs the same operator on the same shapes.  Entries live in
memory and on disk (``$BRAZE_CACHE_DIR/kernels``, default ``~/.cache/braze/kernels``),
one file per kernel holding its encoded program and operand table; a
second compile of the same model generates nothing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from braze.isa import Config, Instruction

from .kernels import Kernel

__all__ = ["KernelCache", "default_cache", "cache_dir", "CACHE_VERSION"]

#: Bump when generated kernels change meaning, or when a class pickled in the records moves (4: the
#: kernels' ``Operand`` from ``braze.sw.kernels`` to ``braze.sw.compiler.kernels``; 5: to
#: ``braze.sw.compiler.kernels.common``, the library split by kernel family), so that old disk
#: entries are ignored.
CACHE_VERSION = 5


def cache_dir() -> Path:
    """``$BRAZE_CACHE_DIR/kernels``, by default ``~/.cache/braze/kernels``."""
    env = os.environ.get("BRAZE_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "braze") / "kernels"


def _key(signature: tuple, config: Config) -> str:
    text = repr((CACHE_VERSION, signature, config.to_json()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


#: Encoded instruction words of kernels, by id (the kernel is kept alongside, so the id stays its own).
_WORDS: dict[int, tuple[Kernel, tuple[int, ...]]] = {}


def encoded_words(kernel: Kernel) -> tuple[int, ...]:
    """The kernel's instructions as 128-bit words, encoded once per kernel object."""
    entry = _WORDS.get(id(kernel))
    if entry is None or entry[0] is not kernel:
        entry = (kernel, tuple(insn.encode() for insn in kernel.instructions))
        _WORDS[id(kernel)] = entry
    return entry[1]


def _to_record(kernel: Kernel) -> dict[str, Any]:
    return {"name": kernel.name, "config": kernel.config.to_dict(),
            "program": [(insn.opcode, dict(insn.args), tuple(sorted(insn.deps)))
                        for insn in kernel.instructions],
            "words": encoded_words(kernel), "operands": kernel.operands, "macs": kernel.macs,
            "predicted_cycles": kernel.predicted_cycles,
            "param_rows": kernel.param_rows, "tiling": kernel.tiling}


def _from_record(record: dict[str, Any]) -> Kernel:
    # Instructions are rebuilt from their fields directly: they were checked when generated, and
    # decoding 128-bit words costs more than the rest of a cached compile.
    program = [Instruction(opcode, MappingProxyType(args), frozenset(deps))
               for opcode, args, deps in record["program"]]
    kernel = Kernel(record["name"], Config.from_dict(record["config"]), program,
                    dict(record["operands"]), record["macs"], record["predicted_cycles"],
                    tuple(record["param_rows"]), dict(record["tiling"]))
    words = tuple(record["words"])
    if len(words) != len(program):
        raise ValueError("cache record: program and words differ in length")
    _WORDS[id(kernel)] = (kernel, words)
    return kernel


class KernelCache:
    """Generated kernels in memory and (unless ``directory=None`` and ``disk=False``) on disk.

    Parameters
    ----------
    directory : path, optional
        Where disk entries live; default :func:`cache_dir` at the time of each access.
    disk : bool
        Use the disk at all (an in-memory cache for tests and one-off compiles).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, disk: bool = True):
        self._directory = Path(directory) if directory is not None else None
        self.disk = disk
        self._memory: dict[str, Kernel] = {}
        self.hits = self.disk_hits = self.misses = 0

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else cache_dir()

    def get_or_build(self, signature: tuple, config: Config, build: Callable[[], Kernel]) -> Kernel:
        """The kernel for ``signature`` on ``config``: from memory, disk, or ``build()`` (then stored)."""
        key = _key(signature, config)
        kernel = self._memory.get(key)
        if kernel is not None:
            self.hits += 1
            return kernel
        path = self.directory / f"{key}.pkl"
        if self.disk and path.is_file():
            try:
                with path.open("rb") as file:
                    kernel = _from_record(pickle.load(file))
            except Exception:             # a corrupt or stale entry is rebuilt, never trusted
                kernel = None
            if kernel is not None and kernel.config == config:
                self.hits += 1
                self.disk_hits += 1
                self._memory[key] = kernel
                return kernel
        self.misses += 1
        kernel = build()
        self._memory[key] = kernel
        if self.disk:
            self._store(path, kernel)
        return kernel

    def _store(self, path: Path, kernel: Kernel) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so that a concurrent reader never sees half a file.
            with tempfile.NamedTemporaryFile("wb", dir=path.parent, delete=False, suffix=".tmp") as file:
                pickle.dump(_to_record(kernel), file)
            os.replace(file.name, path)
        except OSError:
            pass                          # an unwritable cache directory only costs recompilation

    def clear_memory(self) -> None:
        self._memory.clear()

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses,
                "entries": len(self._memory)}

    def __repr__(self) -> str:
        return f"<KernelCache {self.directory if self.disk else 'memory-only'} {self.stats()}>"


_DEFAULT: KernelCache | None = None


def default_cache() -> KernelCache:
    """The process-wide cache (memory + :func:`cache_dir`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = KernelCache()
    return _DEFAULT


