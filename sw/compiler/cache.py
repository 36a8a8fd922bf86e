"""The kernel cache: generated kernels by (fused-operator signature, shapes, dtypes, configuration).

Kernels are generated at a canonical placement (operands packed from
address 0) and relocated by the lowering, so a cached kernel serves every
model that needs the same operator on the same shapes.  Entries live in
memory and on disk (``$BRAZE_CACHE_DIR/kernels``, default ``~/.cache/braze/kernels``);
a second compile of the same model generates nothing.

On disk
-------
One JSON file per kernel, ``<key>.json``: the format name, :data:`CACHE_VERSION`, the key, and
the kernel record (its encoded instruction words as hex, the operand table, the configuration
and the metadata), plus the SHA-256 of that record.  JSON only: reading an entry never runs code,
whatever the file holds.  An entry is used only if the hash matches the record and its words
decode to legal instructions; anything else (a flipped bit, a truncated file, a pickle left by
an old version, another format) is reported with a :class:`KernelCacheWarning` naming the file
and the kernel is rebuilt and rewritten.  The instructions are decoded from the words, so what
the compiler reasons about is exactly what the device runs.  A signature whose kernel cannot be
generated (a :class:`~braze.sw.compiler.kernels.KernelError`, say a tiling candidate the token
queues cannot order) is an entry too, holding the error's message, so a second compile generates
nothing at all.  Writes go to a temporary file in
the same folder and are renamed over the entry, so concurrent readers see a whole old entry or
a whole new one, and concurrent writers of one key (which write the same content) never mix.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from braze.isa import Config
from braze.isa.encoding import INSN_BYTES, decode
from braze.isa.timing import EPILOGUE_LATENCY, MATMUL_LATENCY, VECTOR_LATENCY

from .kernels import Kernel, KernelError, Operand
from .kernels.common import CandidatePruned, prune_cutoff

__all__ = ["KernelCache", "KernelCacheWarning", "default_cache", "cache_dir", "CACHE_VERSION"]

#: Bump when generated kernels or the entry format change meaning, so that old disk entries are
#: ignored (their keys differ).  6: JSON entries with a content hash (5 and before were pickles).
CACHE_VERSION = 6
#: The ``format`` field of every entry, so that a stray JSON file is not mistaken for one.
_FORMAT = "braze-kernel-cache"


class KernelCacheWarning(UserWarning):
    """A disk entry of the kernel cache was rejected (corrupt, tampered with or unreadable); it is rebuilt."""


def cache_dir() -> Path:
    """``$BRAZE_CACHE_DIR/kernels``, by default ``~/.cache/braze/kernels``."""
    env = os.environ.get("BRAZE_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "braze") / "kernels"


@functools.cache
def _generator_fingerprint() -> str:
    """A hash of the code that generates and chooses kernels: the kernel library, the instruction
    encoding and the timing model (kernels carry predicted cycles, and the library picks tilings by
    them).  An entry written by other code is not reused: its program may be valid but is not what
    this code would choose (a changed tiling rule, a deeper RTL pipeline)."""
    import braze.isa as isa_package

    from . import kernels as library_package
    files = sorted(Path(library_package.__file__).parent.glob("*.py"))
    files += [Path(isa_package.__file__).parent / name for name in ("encoding.py", "timing.py")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _key(signature: tuple, config: Config) -> str:
    pipelines = (MATMUL_LATENCY, EPILOGUE_LATENCY, VECTOR_LATENCY)     # also in the fingerprint's sources
    text = repr((CACHE_VERSION, signature, config.to_json(), pipelines, _generator_fingerprint()))
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


def _plain(value: Any) -> Any:
    """``json.dumps``'s fallback for the numpy scalars a kernel's metadata may hold."""
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    raise TypeError(f"kernel cache: cannot store {type(value).__name__} {value!r}")


def _canonical(record: dict[str, Any]) -> bytes:
    """The bytes the content hash covers: the record as compact JSON with sorted keys."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=_plain).encode()


def _to_record(kernel: Kernel) -> dict[str, Any]:
    return {"name": kernel.name, "config": kernel.config.to_dict(),
            "words": [f"{word:032x}" for word in encoded_words(kernel)],
            "operands": [{"name": op.name, "addr": op.addr, "shape": list(op.shape), "dtype": op.dtype.str,
                          "layout": op.layout, "role": op.role} for op in kernel.operands.values()],
            "macs": kernel.macs, "predicted_cycles": kernel.predicted_cycles,
            "param_rows": list(kernel.param_rows), "tiling": kernel.tiling}


def _from_record(record: dict[str, Any]) -> Kernel:
    """The kernel of a record whose hash matched; raises if it is still malformed."""
    words = tuple(int(text, 16) for text in record["words"])
    program = [decode(word, pc=index * INSN_BYTES) for index, word in enumerate(words)]
    operands = {item["name"]: Operand(item["name"], int(item["addr"]), tuple(int(d) for d in item["shape"]),
                                      np.dtype(item["dtype"]), item["layout"], item["role"])
                for item in record["operands"]}
    kernel = Kernel(record["name"], Config.from_dict(record["config"]), program, operands,
                    int(record["macs"]), int(record["predicted_cycles"]), tuple(record["param_rows"]),
                    dict(record["tiling"]))
    _WORDS[id(kernel)] = (kernel, words)
    return kernel


def _entry_bytes(key: str, kernel: Kernel | KernelError) -> bytes:
    # A kernel that cannot be generated for its signature (a KernelError, which depends on nothing
    # else) is remembered too, by its message, so that a second compile generates nothing at all.
    record = {"failure": str(kernel)} if isinstance(kernel, KernelError) else _to_record(kernel)
    return _envelope(key, record)


def _envelope(key: str, record: dict[str, Any]) -> bytes:
    entry = {"format": _FORMAT, "version": CACHE_VERSION, "key": key,
             "sha256": hashlib.sha256(_canonical(record)).hexdigest(), "kernel": record}
    return json.dumps(entry, separators=(",", ":"), default=_plain).encode()


def _read_bound(path: Path, key: str) -> tuple[int, int]:
    """The (lower bound, instructions) of a tiling ruled out, stored at ``path`` (see
    :meth:`KernelCache.get_or_build`); raises ``ValueError`` naming what is wrong with the entry."""
    record = _open_envelope(path, key)
    if set(record) != {"lower_bound", "instructions"} or not all(
            isinstance(value, int) and value >= 0 for value in record.values()):
        raise ValueError("the entry holds no lower bound")
    return record["lower_bound"], record["instructions"]


def _read_entry(path: Path, key: str, config: Config) -> Kernel | KernelError:
    """The kernel (or the generation failure) stored at ``path``; raises ``ValueError`` naming what is
    wrong with the entry."""
    record = _open_envelope(path, key)
    if set(record) == {"failure"} and isinstance(record["failure"], str):
        return KernelError(record["failure"])
    try:
        kernel = _from_record(record)
    except Exception as error:        # a record that hashes right but does not describe a kernel
        raise ValueError(f"malformed kernel record ({type(error).__name__}: {error})") from None
    if kernel.config != config:
        raise ValueError(f"the entry is for config {kernel.config.name!r}, not {config.name!r}")
    return kernel


def _open_envelope(path: Path, key: str) -> dict[str, Any]:
    """The record of the entry at ``path`` after checking its format, version, key and content hash."""
    try:
        entry = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a JSON cache entry") from None
    if not isinstance(entry, dict) or entry.get("format") != _FORMAT:
        raise ValueError("not a kernel cache entry")
    if entry.get("version") != CACHE_VERSION or entry.get("key") != key:
        raise ValueError(f"entry of version {entry.get('version')!r}, key {entry.get('key')!r}; "
                         f"expected version {CACHE_VERSION}, key {key}")
    record = entry.get("kernel")
    if not isinstance(record, dict):
        raise ValueError("the entry holds no kernel record")
    digest = hashlib.sha256(_canonical(record)).hexdigest()
    if digest != entry.get("sha256"):
        raise ValueError(f"content hash mismatch (stored {str(entry.get('sha256'))[:16]}..., "
                         f"computed {digest[:16]}...)")
    return record


class KernelCache:
    """Generated kernels in memory and (unless ``disk=False``) on disk.

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
        self._memory: dict[str, Kernel | KernelError] = {}
        self.hits = self.disk_hits = self.misses = self.rejected = 0
        self.pruned = 0      # builds a CandidatePruned stopped (a tiling ruled out by its lower bound)
        # (lower bound, instructions) of the tilings ruled out, by key.
        self._bounds: dict[str, tuple[int, int]] = {}

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else cache_dir()

    def get_or_build(self, signature: tuple, config: Config, build: Callable[[], Kernel]) -> Kernel:
        """The kernel for ``signature`` on ``config``: from memory, disk, or ``build()`` (then stored).

        A :class:`KernelError` of ``build()`` is stored as well, and raised again on every request.
        A :class:`~.kernels.common.CandidatePruned` passes through, nothing stored.
        """
        key = _key(signature, config)
        kernel = self._memory.get(key)
        path = self.directory / f"{key}.json"
        if kernel is None and self.disk:
            kernel = self._load(path, lambda path: _read_entry(path, key, config))
            if kernel is not None:
                self.disk_hits += 1
                self._memory[key] = kernel
        if kernel is not None:
            self.hits += 1
        else:
            # A tiling ruled out before by its lower bound (kept beside the kernels, so that a cached
            # compile reads the kernels it may choose and not the others), if the bound rules it out
            # again (prune_above).
            cutoff = prune_cutoff()
            bound = self._bound(key) if cutoff is not None else None
            if bound is not None and bound[0] >= cutoff:
                self.pruned += 1
                raise CandidatePruned(*bound)
            self.misses += 1
            try:
                kernel = build()
            except KernelError as error:
                # Kept without its traceback: that holds the frames of the build (a candidate's streams).
                kernel = error.with_traceback(None)
            except CandidatePruned as pruned:
                # Not generated: no kernel to store, and no miss; its bound is kept.
                self.misses -= 1
                self.pruned += 1
                self._bounds[key] = (pruned.lower_bound, pruned.instructions)
                if self.disk:
                    self._write(self.directory / f"{key}.bound.json", key,
                                _envelope(key, {"lower_bound": pruned.lower_bound,
                                                "instructions": pruned.instructions}))
                raise
            self._memory[key] = kernel
            if self.disk:
                self._store(path, key, kernel)
        if isinstance(kernel, KernelError):
            raise KernelError(str(kernel))
        return kernel

    def _load(self, path: Path, read: Callable[[Path], Any]) -> Any:
        """``read(path)``: the entry at ``path``, or None when there is none or it cannot be trusted (with a
        warning)."""
        try:
            return read(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self.rejected += 1
            warnings.warn(f"kernel cache entry {path} rejected: {error}; rebuilding the kernel",
                          KernelCacheWarning, stacklevel=3)
            return None

    def _bound(self, key: str) -> tuple[int, int] | None:
        """The lower bound and size of the tiling ``key`` once ruled out, from memory or disk, if any."""
        bound = self._bounds.get(key)
        if bound is None and self.disk:
            bound = self._load(self.directory / f"{key}.bound.json", lambda path: _read_bound(path, key))
            if bound is not None:
                self._bounds[key] = bound
        return bound

    def _store(self, path: Path, key: str, kernel: Kernel | KernelError) -> None:
        self._write(path, key, _entry_bytes(key, kernel))

    def _write(self, path: Path, key: str, payload: bytes) -> None:
        # An unwritable cache directory only costs recompilation.
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(payload)
            # Rename over the entry, so that a concurrent reader never sees half a file.
            os.replace(temporary, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def clear_memory(self) -> None:
        self._memory.clear()
        self._bounds.clear()

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses,
                "rejected": self.rejected, "entries": len(self._memory), "pruned": self.pruned}

    def __repr__(self) -> str:
        return f"<KernelCache {self.directory if self.disk else 'memory-only'} {self.stats()}>"


_DEFAULT: KernelCache | None = None


def default_cache() -> KernelCache:
    """The process-wide cache (memory + :func:`cache_dir`)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = KernelCache()
    return _DEFAULT
