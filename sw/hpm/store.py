"""The performance history: one row per kernel run on a device, in SQLite.

Every row holds what the hardware performance model learns from and is judged on: the kernel's
signature (its family, shapes, tiling, dtypes) and instruction-stream features, the
configuration, the device kind and its memory system (read latency, backpressure), every counter
of the run, the prediction that was in use when it ran and by which model, and when.

The file lives under the cache directory (``$BRAZE_CACHE_DIR/hpm/history.sqlite`` by default)
in WAL mode, so several processes (a calibration, a running session, a benchmark) may write at
once; each insert is one transaction, so a crash loses no row already committed.  The schema is
versioned with SQLite's ``user_version`` and upgraded in place by :data:`MIGRATIONS`.  A file that
is not a SQLite database, or one too new for this code, is a :class:`HistoryError` naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import lzma
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from braze.isa import BrazeError, Instruction
from braze.isa.encoding import decode_program, encode_program

__all__ = ["HistoryError", "HistoryStore", "RunRecord", "CodeletRun", "DseResult", "MIGRATIONS",
           "group_repeats",
           "default_history_path",
           "signature_hash", "pack_program", "unpack_program", "RUNS_FORMAT", "RUNS_FORMAT_VERSION"]

#: Schema migrations: ``MIGRATIONS[i]`` takes a database at ``user_version`` i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    # 1: runs with their signature, configuration, memory system, features, counters, prediction.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        family TEXT NOT NULL,
        signature TEXT NOT NULL,
        signature_hash TEXT NOT NULL,
        config_name TEXT NOT NULL,
        config TEXT NOT NULL,
        device TEXT NOT NULL,
        read_latency INTEGER NOT NULL,
        stall REAL NOT NULL,
        features TEXT NOT NULL,
        counters TEXT NOT NULL,
        cycles INTEGER NOT NULL,
        predicted_cycles INTEGER,
        predictor TEXT,
        source TEXT NOT NULL
    );
    CREATE INDEX runs_by_kernel ON runs (signature_hash, config_name, device, read_latency, stall);
    CREATE INDEX runs_by_family ON runs (family);
    """,
    # 2: the energy estimate of each run (picojoules), from its counters.
    """
    ALTER TABLE runs ADD COLUMN energy_pj REAL;
    """,
    # 3: the kernel's program (zlib-compressed instruction words, no HALT), so that features can be
    # recomputed when they change instead of running the kernel again.
    """
    ALTER TABLE runs ADD COLUMN program BLOB;
    """,
    # 4: codelet runs of the fleet dispatcher (braze.sw.fleet): what ran where, in which version, how
    # long it took and what its outputs weighed; the dispatcher's estimates learn from them.
    """
    CREATE TABLE codelet_runs (
        id INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        program TEXT NOT NULL,
        codelet TEXT NOT NULL,
        signature TEXT NOT NULL,
        pattern TEXT NOT NULL,
        version TEXT NOT NULL,
        fleet TEXT NOT NULL,
        worker TEXT NOT NULL,
        seconds REAL NOT NULL,
        output_bytes INTEGER NOT NULL,
        serialize_seconds REAL NOT NULL,
        cycles INTEGER,
        predicted_seconds REAL,
        fallback TEXT,
        error TEXT,
        source TEXT NOT NULL
    );
    CREATE INDEX codelet_runs_by_signature ON codelet_runs (signature, version);
    """,
    # 5: design-space exploration (braze.sw.dse): one row per configuration evaluated for a
    # workload -- its objectives, which model predicted its cycles, and, for finalists, the cycles
    # measured on a device -- so that an exploration resumes where it stopped.
    """
    CREATE TABLE dse_results (
        id INTEGER PRIMARY KEY,
        recorded_at REAL NOT NULL,
        workload TEXT NOT NULL,
        config_name TEXT NOT NULL,
        config TEXT NOT NULL,
        metrics TEXT NOT NULL,
        predictor TEXT NOT NULL,
        measured_cycles INTEGER,
        measured_device TEXT,
        UNIQUE (workload, config)
    );
    """,
    # 6: the seed of the run's memory backpressure pattern (VerilatorDevice.set_stall_seed), NULL when
    # the pattern ran on from the process's earlier cycles: a seeded run reproduces exactly, and
    # repeats of one kernel under different seeds measure the run-to-run noise.
    """
    ALTER TABLE runs ADD COLUMN stall_seed INTEGER;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: How long a writer waits for another's lock before giving up (seconds).
BUSY_TIMEOUT = 30.0


#: The ``format`` field of an exported runs file (:meth:`HistoryStore.export_runs`) and its version.
RUNS_FORMAT = "braze-hpm-runs"
RUNS_FORMAT_VERSION = 1


class HistoryError(BrazeError):
    """The performance history cannot be used (not a database, locked for too long, too new)."""


def default_history_path() -> Path:
    """``$BRAZE_HISTORY``, else ``$BRAZE_CACHE_DIR/hpm/history.sqlite`` (default ``~/.cache/braze/...``)."""
    if os.environ.get("BRAZE_HISTORY"):
        return Path(os.environ["BRAZE_HISTORY"])
    configured = os.environ.get("BRAZE_CACHE_DIR")
    return (Path(configured) if configured else Path.home() / ".cache" / "braze") / "hpm" / "history.sqlite"


def signature_hash(signature: Mapping[str, Any]) -> str:
    """A stable hash of a kernel signature (the key that calibration skips what it has by)."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:24]


@dataclasses.dataclass
class RunRecord:
    """One kernel run as the history stores it.

    Attributes
    ----------
    family : str
        The kernel family (``gemm``, ``conv2d``, ``maxpool2d``, ``add`` ...): held-out evaluation
        splits by it.
    signature : dict
        What identifies the kernel: family, shapes, epilogue, tiling.
    config_name, config : str, dict
        The configuration's name and its fields.
    device : str
        The back end (``verilator``, ``amaranth``, ``golden``).
    read_latency : int
        External memory read latency in cycles.
    stall : float
        Probability of AXI backpressure per handshake.
    features : dict[str, float]
        Instruction-stream and configuration features (:func:`braze.sw.hpm.features.kernel_features`).
    counters : dict[str, int]
        Every counter of the kernel's snapshot.
    predicted_cycles : int or None
        The prediction in use when it ran, by ``predictor``.
    source : str
        Who recorded it: ``calibrate``, ``runtime``, ``bench``, ``test``.
    energy_pj : float or None
        Energy estimate from the counters.
    program : bytes or None
        The kernel's instructions (:func:`pack_program`); read only when asked for (``records(
        programs=True)``), since training needs only the features.
    recorded_at : float
        Unix time.
    id : int or None
        Row id once stored.
    stall_seed : int or None
        The seed of the memory's backpressure pattern in this run (``VerilatorDevice.set_stall_seed``),
        or None when it was not seeded (the pattern ran on from the process's earlier cycles).
    """

    family: str
    signature: dict
    config_name: str
    config: dict
    device: str
    read_latency: int
    stall: float
    features: dict
    counters: dict
    predicted_cycles: int | None = None
    predictor: str | None = None
    source: str = "runtime"
    energy_pj: float | None = None
    program: bytes | None = dataclasses.field(default=None, repr=False)
    recorded_at: float = dataclasses.field(default_factory=time.time)
    id: int | None = None
    stall_seed: int | None = None

    @property
    def cycles(self) -> int:
        return int(self.counters["cycles"])

    @property
    def signature_hash(self) -> str:
        return signature_hash(self.signature)

    @property
    def repeat_key(self) -> tuple:
        """What repeats of one measurement share: the kernel, the whole configuration, the device and
        its memory system, and so the features (two kernels of one signature whose programs differ in
        a way the features see are not repeats).  Runs with one key differ only in their backpressure
        pattern."""
        return (self.signature_hash, json.dumps(self.config, sort_keys=True), self.device,
                int(self.read_latency), round(float(self.stall), 9),
                json.dumps(self.features, sort_keys=True))


def group_repeats(records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """``records`` grouped by :attr:`RunRecord.repeat_key` (groups in order of their first run)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.repeat_key, []).append(record)
    return list(groups.values())


@dataclasses.dataclass
class CodeletRun:
    """One codelet run of the fleet dispatcher (:mod:`braze.sw.fleet`), as the history stores it.

    Attributes
    ----------
    program, codelet : str
        The program's name and the codelet's id in it.
    signature : str
        What identifies the work: a hash of the codelet's code and its inputs' shapes and types.
    pattern : str
        The computational pattern the profiler recognised (``matmul``, ``hash``, ``io`` ...).
    version : str
        ``cpu`` or the accelerator kind it ran on (``accel-tiny`` ...).
    fleet, worker : str
        Where it ran.
    seconds : float
        Wall time of the codelet's body on the worker.
    output_bytes, serialize_seconds : int, float
        Pickled size of its outputs and the time pickling them took (the cost of moving them).
    cycles : int or None
        Accelerator cycles, for accelerator versions.
    predicted_seconds : float or None
        The dispatcher's estimate when it routed the codelet.
    fallback : str or None
        Why it ran on the CPU although the plan wanted an accelerator.
    error : str or None
        What it raised, if it failed.
    source : str
        Who recorded it: ``fleet``, ``bench``, ``test``.
    """

    program: str
    codelet: str
    signature: str
    pattern: str
    version: str
    fleet: str
    worker: str
    seconds: float
    output_bytes: int = 0
    serialize_seconds: float = 0.0
    cycles: int | None = None
    predicted_seconds: float | None = None
    fallback: str | None = None
    error: str | None = None
    source: str = "fleet"
    recorded_at: float = dataclasses.field(default_factory=time.time)
    id: int | None = None


@dataclasses.dataclass
class DseResult:
    """One configuration evaluated by design-space exploration (:mod:`braze.sw.dse`).

    Attributes
    ----------
    workload : str
        What was explored for (``digits-cnn:batch=8``, ``gemm:64x64x64``, a model file's digest).
    config : dict
        The configuration's fields (its name among them).
    metrics : dict
        The objectives and what else the evaluation computed (cycles, energy, area estimate ...).
    predictor : str
        What predicted the cycles: ``learned`` or ``analytic-mem``.
    measured_cycles, measured_device : int or None, str or None
        Cycles measured on a device, for the configurations confirmed there.
    """

    workload: str
    config: dict
    metrics: dict
    predictor: str
    measured_cycles: int | None = None
    measured_device: str | None = None
    recorded_at: float = dataclasses.field(default_factory=time.time)
    id: int | None = None

    @property
    def config_name(self) -> str:
        return str(self.config["name"])


_CODELET_COLUMNS = ("recorded_at", "program", "codelet", "signature", "pattern", "version", "fleet", "worker",
                    "seconds", "output_bytes", "serialize_seconds", "cycles", "predicted_seconds", "fallback",
                    "error", "source")


_COLUMNS = ("recorded_at", "family", "signature", "signature_hash", "config_name", "config", "device",
            "read_latency", "stall", "features", "counters", "cycles", "predicted_cycles", "predictor",
            "source", "energy_pj", "program", "stall_seed")


def _pack_words(words: bytes) -> bytes:
    """Encoded instruction words as the history's ``program`` column stores them: zlib-compressed."""
    return zlib.compress(words, 6)


def _unpack_words(blob: bytes) -> bytes:
    """The encoded instruction words of a ``program`` column's ``blob``."""
    return zlib.decompress(blob)


def pack_program(instructions: Sequence[Instruction]) -> bytes:
    """A kernel's instructions as the history stores them: encoded words, zlib-compressed."""
    return _pack_words(encode_program(list(instructions)))


def unpack_program(blob: bytes) -> list[Instruction]:
    """The instructions of :func:`pack_program`'s ``blob``."""
    return decode_program(_unpack_words(blob))


class HistoryStore:
    """The performance history in one SQLite file.

    Parameters
    ----------
    path : str or Path or None
        The database file (created with its folder); :func:`default_history_path` by default.
        ``":memory:"`` keeps it in memory (tests).
    """

    def __init__(self, path: str | Path | None = None):
        self.path = default_history_path() if path is None else path
        if str(self.path) != ":memory:":
            self.path = Path(self.path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise HistoryError(f"cannot create the folder of the performance history {self.path}: "
                                   f"{error.strerror}") from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as error:
            raise self._error("cannot be opened", error) from None

    def _error(self, what: str, error: Exception) -> HistoryError:
        return HistoryError(f"performance history {self.path} {what}: {error}")

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(f"performance history {self.path} has schema version {version}, newer than "
                               f"this Braze's {SCHEMA_VERSION}; upgrade Braze or use another file")
        while version < SCHEMA_VERSION:
            # One transaction per step: a crash mid-migration leaves the previous version intact.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current = self._db.execute("PRAGMA user_version").fetchone()[0]
                if current == version:          # another process may have migrated meanwhile
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {version + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            version = self._db.execute("PRAGMA user_version").fetchone()[0]

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- Writing. --------------------------------------------------------------------------------
    def add(self, record: RunRecord) -> int:
        """Store one run (one transaction); returns its row id."""
        return self.add_many([record])[0]

    def add_many(self, records: Sequence[RunRecord]) -> list[int]:
        """Store runs in one transaction (all or none); returns their row ids."""
        insert = f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
        return self._insert(insert, records, [self._row(record) for record in records])

    @contextlib.contextmanager
    def _transaction(self):
        """One write transaction: committed whole, or rolled back whole (and a clear error)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            raise self._error("could not be written", error) from None

    def _insert(self, insert: str, items: Sequence[Any], rows: Sequence[tuple]) -> list[int]:
        """Insert ``rows`` in one transaction; each item's ``id`` becomes its row's."""
        with self._transaction() as db:
            ids = [db.execute(insert, row).lastrowid for row in rows]
        for item, row_id in zip(items, ids, strict=True):
            item.id = row_id
        return ids

    @staticmethod
    def _row(record: RunRecord) -> tuple:
        return (record.recorded_at, record.family, json.dumps(record.signature, sort_keys=True),
                record.signature_hash, record.config_name, json.dumps(record.config, sort_keys=True),
                record.device, int(record.read_latency), float(record.stall),
                json.dumps(record.features, sort_keys=True), json.dumps(record.counters, sort_keys=True),
                record.cycles, record.predicted_cycles, record.predictor, record.source, record.energy_pj,
                record.program, record.stall_seed)

    def update_features(self, updates: Sequence[tuple[int, Mapping[str, Any], Mapping[str, float],
                                                      bytes | None]]) -> int:
        """Replace rows' signatures and features (and programs, where given) in one transaction.

        ``updates`` holds ``(row id, signature, features, program or None)``; the measured counters
        are never touched.  Returns how many rows changed.
        """
        statement = ("UPDATE runs SET signature = ?, signature_hash = ?, features = ?, "
                     "program = coalesce(?, program) WHERE id = ?")
        changed = 0
        with self._transaction() as db:
            for row_id, signature, features, program in updates:
                changed += db.execute(statement, (
                    json.dumps(signature, sort_keys=True), signature_hash(signature),
                    json.dumps(features, sort_keys=True), program, int(row_id))).rowcount
        return changed

    # --- Reading. --------------------------------------------------------------------------------
    def records(self, *, family: str | None = None, config_name: str | None = None,
                config: Mapping[str, Any] | None = None, device: str | None = None, since_id: int = 0,
                limit: int | None = None, programs: bool = False) -> list[RunRecord]:
        """Stored runs, oldest first, optionally filtered (``config``: a whole ``Config.to_dict()``);
        with their programs if ``programs``."""
        return list(self._select(family=family, config_name=config_name, config=config, device=device,
                                 since_id=since_id, limit=limit, programs=programs))

    def _select(self, *, family, config_name, device, since_id, limit, programs=False,
                config=None) -> Iterator[RunRecord]:
        where, args = ["id > ?"], [since_id]
        config_text = None if config is None else json.dumps(dict(config), sort_keys=True)
        for column, value in (("family", family), ("config_name", config_name), ("config", config_text),
                              ("device", device)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        columns = [column if programs or column != "program" else "NULL" for column in _COLUMNS]
        query = f"SELECT id, {', '.join(columns)} FROM runs WHERE {' AND '.join(where)} ORDER BY id"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        try:
            rows = self._db.execute(query, args).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._error("could not be read", error) from None
        for row in rows:
            (row_id, recorded_at, family_, signature, _, config_name_, config, device_, read_latency, stall,
             features, counters, _, predicted, predictor, source, energy, program, stall_seed) = row
            yield RunRecord(family_, json.loads(signature), config_name_, json.loads(config), device_,
                            read_latency, stall, json.loads(features), json.loads(counters), predicted,
                            predictor, source, energy, program, recorded_at, row_id, stall_seed)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def has(self, signature: Mapping[str, Any], config: Mapping[str, Any], device: str, read_latency: int,
            stall: float) -> bool:
        """Whether a run of this kernel under this configuration (``Config.to_dict()``: its whole identity,
        not only its name -- a preset whose fields change keeps its name) and memory system is stored."""
        row = self._db.execute(
            "SELECT 1 FROM runs WHERE signature_hash = ? AND config = ? AND device = ? "
            "AND read_latency = ? AND abs(stall - ?) < 1e-9 LIMIT 1",
            (signature_hash(signature), json.dumps(dict(config), sort_keys=True), device, int(read_latency),
             float(stall))).fetchone()
        return row is not None

    def stall_seeds(self, signature: Mapping[str, Any], config: Mapping[str, Any], device: str,
                    read_latency: int, stall: float) -> list[int | None]:
        """The backpressure seeds of the stored runs of this kernel, configuration and memory system
        (None for an unseeded run), oldest first: how many repeats it has, and under which patterns."""
        rows = self._db.execute(
            "SELECT stall_seed FROM runs WHERE signature_hash = ? AND config = ? AND device = ? "
            "AND read_latency = ? AND abs(stall - ?) < 1e-9 ORDER BY id",
            (signature_hash(signature), json.dumps(dict(config), sort_keys=True), device, int(read_latency),
             float(stall))).fetchall()
        return [row[0] for row in rows]

    def families(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT family FROM runs ORDER BY family")]

    # --- Codelet runs of the fleet dispatcher. -----------------------------------------------------
    def add_codelet_runs(self, runs: Sequence[CodeletRun]) -> list[int]:
        """Store codelet runs in one transaction (all or none); returns their row ids."""
        insert = (f"INSERT INTO codelet_runs ({', '.join(_CODELET_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in _CODELET_COLUMNS)})")
        return self._insert(insert, runs, [tuple(getattr(run, column) for column in _CODELET_COLUMNS)
                                           for run in runs])

    def codelet_runs(self, *, signature: str | None = None, version: str | None = None,
                     limit: int | None = None) -> list[CodeletRun]:
        """Stored codelet runs, oldest first (the newest ``limit`` with ``limit``), optionally filtered."""
        where, args = ["1"], []
        for column, value in (("signature", signature), ("version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        query = f"SELECT id, {', '.join(_CODELET_COLUMNS)} FROM codelet_runs WHERE {' AND '.join(where)}"
        query += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit is not None else "")
        try:
            rows = self._db.execute(query, args).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._error("could not be read", error) from None
        return [CodeletRun(**dict(zip(_CODELET_COLUMNS, row[1:], strict=True)), id=row[0])
                for row in reversed(rows)]

    # --- Design-space exploration. -----------------------------------------------------------------
    def add_dse_results(self, results: Sequence[DseResult]) -> list[int]:
        """Store evaluated configurations in one transaction; one of the same workload and
        configuration already stored is replaced (a re-evaluation, or its measured cycles added)."""
        insert = ("INSERT OR REPLACE INTO dse_results (recorded_at, workload, config_name, config, metrics, "
                  "predictor, measured_cycles, measured_device) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        rows = [(result.recorded_at, result.workload, result.config_name,
                 json.dumps(result.config, sort_keys=True), json.dumps(result.metrics, sort_keys=True),
                 result.predictor, result.measured_cycles, result.measured_device) for result in results]
        return self._insert(insert, results, rows)

    def dse_results(self, workload: str) -> list[DseResult]:
        """The configurations evaluated for ``workload``, oldest first."""
        query = ("SELECT id, recorded_at, workload, config, metrics, predictor, measured_cycles, "
                 "measured_device FROM dse_results WHERE workload = ? ORDER BY id")
        try:
            rows = self._db.execute(query, (workload,)).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._error("could not be read", error) from None
        return [DseResult(workload_, json.loads(config), json.loads(metrics), predictor, measured, device,
                          recorded_at, row_id)
                for row_id, recorded_at, workload_, config, metrics, predictor, measured, device in rows]

    # --- Export and import of runs (a history that outlives the machine). --------------------------
    def export_runs(self, path: str | Path, *, device: str | None = None, source: str | None = "calibrate",
                    features: bool = True) -> int:
        """Write the stored runs (of ``device``, recorded by ``source``; None: all) to ``path``, an
        xz-compressed file of JSON lines; returns how many.

        The history lives under the cache directory and is lost with the machine; this file, committed
        beside the shipped model, is what rebuilds it (:meth:`import_runs`).  Each configuration and
        each distinct program is written once (the runs name them): the programs are what ``braze hpm
        refeature`` recomputes features from, so the file stays useful when the features change.
        With ``features`` the runs keep theirs too (with their version), so an import into this
        Braze needs no recomputation.
        """
        lines: list[str] = []
        configs: dict[str, int] = {}
        programs: set[str] = set()
        count = 0
        for record in self._select(family=None, config_name=None, device=device, since_id=0, limit=None,
                                   programs=True):
            if source is not None and record.source != source:
                continue
            config_text = json.dumps(record.config, sort_keys=True)
            if config_text not in configs:
                configs[config_text] = len(configs)
                entry = {"kind": "config", "id": configs[config_text], "config": record.config}
                lines.append(json.dumps(entry, sort_keys=True))
            program_id = None
            if record.program is not None:
                words = _unpack_words(record.program)
                program_id = hashlib.sha256(words).hexdigest()[:24]
                if program_id not in programs:
                    # Uncompressed, in hex (byte-aligned): the file's one compression finds what programs
                    # share -- 40% smaller than base64 on a calibration history.
                    programs.add(program_id)
                    lines.append(json.dumps({"kind": "program", "id": program_id, "words": words.hex()}))
            run = {"kind": "run", "recorded_at": record.recorded_at, "family": record.family,
                   "signature": record.signature, "config_name": record.config_name,
                   "config": configs[config_text], "device": record.device,
                   "read_latency": record.read_latency, "stall": record.stall, "counters": record.counters,
                   "predicted_cycles": record.predicted_cycles, "predictor": record.predictor,
                   "source": record.source, "energy_pj": record.energy_pj, "program": program_id,
                   "stall_seed": record.stall_seed}
            if features:
                run["features"] = record.features
            lines.append(json.dumps(run, sort_keys=True))
            count += 1
        header = {"kind": "header", "format": RUNS_FORMAT, "version": RUNS_FORMAT_VERSION, "runs": count,
                  "schema_version": SCHEMA_VERSION}
        data = "\n".join([json.dumps(header, sort_keys=True), *lines]) + "\n"
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # preset 9 | extreme: about a third smaller than the default on a calibration history.
        temporary.write_bytes(lzma.compress(data.encode(), preset=9 | lzma.PRESET_EXTREME))
        temporary.replace(path)
        return count

    def import_runs(self, path: str | Path) -> tuple[int, int]:
        """Add the runs of an exported file (:meth:`export_runs`) that the history does not hold yet
        (one run is its kernel, configuration, device, memory system, stall seed and recording time),
        in one transaction; returns (added, already held).  Runs exported without features get an
        empty feature set of no version: ``braze hpm refeature`` computes them from their programs."""
        path = Path(path)
        try:
            text = lzma.decompress(path.read_bytes()).decode()
            entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, lzma.LZMAError, UnicodeDecodeError, ValueError) as error:
            raise HistoryError(f"runs file {path} cannot be read: {error}") from None
        header = entries[0] if entries else {}
        if header.get("format") != RUNS_FORMAT or header.get("version") != RUNS_FORMAT_VERSION:
            raise HistoryError(f"runs file {path} is not a {RUNS_FORMAT} file of version "
                               f"{RUNS_FORMAT_VERSION} (its header: {json.dumps(header)[:200]})")
        configs, programs, records = {}, {}, []
        for number, entry in enumerate(entries[1:], start=2):
            try:
                kind = entry["kind"]
                if kind == "config":
                    configs[entry["id"]] = entry["config"]
                elif kind == "program":
                    programs[entry["id"]] = _pack_words(bytes.fromhex(entry["words"]))
                elif kind == "run":
                    program = entry["program"]
                    records.append(RunRecord(
                        family=entry["family"], signature=entry["signature"],
                        config_name=entry["config_name"], config=configs[entry["config"]],
                        device=entry["device"], read_latency=entry["read_latency"], stall=entry["stall"],
                        features=entry.get("features", {}), counters=entry["counters"],
                        predicted_cycles=entry["predicted_cycles"], predictor=entry["predictor"],
                        source=entry["source"], energy_pj=entry["energy_pj"],
                        program=None if program is None else programs[program],
                        recorded_at=entry["recorded_at"], stall_seed=entry["stall_seed"]))
                else:
                    raise KeyError(f"kind {kind!r}")
            except (KeyError, TypeError, ValueError) as error:
                raise HistoryError(f"runs file {path}, line {number}: bad entry ({error})") from None
        if len(records) != header.get("runs"):
            raise HistoryError(f"runs file {path} holds {len(records)} runs, its header says "
                               f"{header.get('runs')}: truncated or edited")
        new = [record for record in records if not self._holds(record)]
        self.add_many(new)
        return len(new), len(records) - len(new)

    def _holds(self, record: RunRecord) -> bool:
        """Whether this very run (same kernel, configuration, device, memory, seed and time) is stored."""
        row = self._db.execute(
            "SELECT 1 FROM runs WHERE signature_hash = ? AND config = ? AND device = ? AND read_latency = ? "
            "AND abs(stall - ?) < 1e-9 AND stall_seed IS ? AND recorded_at = ? LIMIT 1",
            (record.signature_hash, json.dumps(record.config, sort_keys=True), record.device,
             int(record.read_latency), float(record.stall), record.stall_seed, record.recorded_at)).fetchone()
        return row is not None
