"""The performance history store: round trip, concurrent writers, migration, bad files."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from braze.sw.hpm.store import MIGRATIONS, SCHEMA_VERSION, CodeletRun, HistoryError, HistoryStore, RunRecord


def _record(index: int, *, family: str = "gemm", stall: float = 0.0) -> RunRecord:
    return RunRecord(family=family, signature={"family": family, "shape": [index, 8, 8]},
                     config_name="tiny", config={"rows": 4, "cols": 4}, device="verilator",
                     read_latency=16, stall=stall, features={"macs": 64.0 * index, "stall": stall},
                     counters={"cycles": 100 + index, "macs": 64 * index}, predicted_cycles=90 + index,
                     predictor="isa-timing", source="test", energy_pj=1.5 * index)


def test_round_trip(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        ids = store.add_many([_record(i) for i in range(5)])
        store.add(_record(9, family="conv2d", stall=0.25))
    with HistoryStore(tmp_path / "h.sqlite") as store:       # reopened: everything was committed
        assert store.count() == 6
        records = store.records()
        assert [r.id for r in records[:5]] == ids
        first = records[1]
        assert first.signature == {"family": "gemm", "shape": [1, 8, 8]}
        assert first.counters == {"cycles": 101, "macs": 64} and first.cycles == 101
        assert first.features == {"macs": 64.0, "stall": 0.0}
        assert (first.predicted_cycles, first.predictor, first.energy_pj) == (91, "isa-timing", 1.5)
        assert store.families() == ["conv2d", "gemm"]
        assert [r.family for r in store.records(family="conv2d")] == ["conv2d"]
        config = {"rows": 4, "cols": 4}
        assert store.has({"family": "conv2d", "shape": [9, 8, 8]}, config, "verilator", 16, 0.25)
        assert not store.has({"family": "conv2d", "shape": [9, 8, 8]}, config, "verilator", 16, 0.0)
        # A configuration is its whole identity: the same name with another field is another one.
        assert not store.has({"family": "conv2d", "shape": [9, 8, 8]}, {**config, "load_overlap": 4},
                             "verilator", 16, 0.25)
        assert [r.config for r in store.records(config=config)][:1] == [config]
        assert store.records(config={**config, "load_overlap": 4}) == []
        assert [r.id for r in store.records(since_id=ids[-1])] == [records[-1].id]


def _write_rows(path: str, worker: int, rows: int) -> None:
    with HistoryStore(path) as store:
        for index in range(rows):
            store.add(_record(1000 * worker + index))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "h.sqlite")
    HistoryStore(path).close()
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(_write_rows, [(path, worker, 40) for worker in range(4)])
    with HistoryStore(path) as store:
        shapes = sorted(r.signature["shape"][0] for r in store.records())
    assert shapes == sorted(1000 * worker + index for worker in range(4) for index in range(40))


def test_a_version_1_file_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO runs (recorded_at, family, signature, signature_hash, config_name, config, "
               "device, read_latency, stall, features, counters, cycles, source) VALUES "
               "(1.0, 'gemm', '{}', 'h', 'tiny', '{}', 'golden', 16, 0.0, '{}', '{\"cycles\": 7}', 7, 'old')")
    db.commit()
    db.close()
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION > 1
        (record,) = store.records()
        assert record.cycles == 7 and record.source == "old" and record.energy_pj is None
        store.add(_record(1))
        assert store.count() == 2


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "h.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(HistoryError, match=r"h\.sqlite"):
        HistoryStore(path)


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(HistoryError, match="newer than"):
        HistoryStore(path)


def test_a_failed_batch_commits_nothing(tmp_path):
    with HistoryStore(tmp_path / "h.sqlite") as store:
        store.add(_record(1))
        bad = _record(2)
        bad.counters = {"macs": 1}          # no cycles: the record cannot be stored
        with pytest.raises(KeyError):
            store.add_many([_record(3), bad])
        assert store.count() == 1


def test_refeature_recomputes_features_from_programs_without_touching_counters(tmp_path):
    """Rows recorded with older features get this Braze's: from the program stored with them, or --
    for rows recorded before programs were stored -- from the calibration kernel they match."""
    from braze.isa import Config
    from braze.sw.hpm.calibrate import calibration_kernels, record_run, refeature
    from braze.sw.hpm.features import FEATURE_VERSION, MemorySystem, kernel_features
    from braze.sw.hpm.store import unpack_program

    tiny = Config.preset("tiny")
    stored, regenerated, unknown = calibration_kernels(tiny, count=12, seed=0)[:3]
    memory = MemorySystem(tiny.mem_latency, 0.25)
    counters = {"cycles": 4321, "macs": 99}

    def old(kernel, *, program: bool) -> RunRecord:
        record = record_run(kernel, counters, device="verilator", memory=memory, source="test")
        assert unpack_program(record.program) == kernel.instructions
        record.signature = dict(record.signature, feature_version=FEATURE_VERSION - 1)
        record.features = {"feature_version": FEATURE_VERSION - 1, "gone": 1.0}
        record.program = record.program if program else None
        return record

    lost = old(unknown, program=False)
    lost.signature = dict(lost.signature, operands="not a calibration kernel")
    with HistoryStore(tmp_path / "h.sqlite") as store:
        store.add_many([old(stored, program=True), old(regenerated, program=False), lost])
        report = refeature(store, count=12, seed=0, progress=None)
        assert (report.refeatured, report.programs_found, report.left) == (2, 1, 1)
        first, second, third = store.records(programs=True)
    for record, kernel in ((first, stored), (second, regenerated)):
        assert record.features == kernel_features(kernel, tiny, memory)
        assert record.signature["feature_version"] == FEATURE_VERSION
        assert unpack_program(record.program) == kernel.instructions
        assert record.counters == counters
    assert third.features == {"feature_version": FEATURE_VERSION - 1, "gone": 1.0} and third.program is None


def test_a_version_3_file_gains_the_codelet_runs_table_keeping_its_rows(tmp_path):
    path = tmp_path / "v3.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + MIGRATIONS[1] + MIGRATIONS[2])
    db.execute("PRAGMA user_version = 3")
    db.execute("INSERT INTO runs (recorded_at, family, signature, signature_hash, config_name, config, "
               "device, read_latency, stall, features, counters, cycles, source, energy_pj) VALUES "
               "(1.0, 'gemm', '{}', 'h', 'tiny', '{}', 'golden', 16, 0.0, '{}', '{\"cycles\": 9}', 9, 'old', "
               "2.5)")
    db.commit()
    db.close()
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 4
        (record,) = store.records()
        assert record.cycles == 9 and record.energy_pj == 2.5
        assert store.codelet_runs() == []
        run = CodeletRun("prog", "c1", "sig", "matmul", "accel-tiny", "heavy", "tcp://w", 0.25,
                         output_bytes=100, cycles=1234, fallback=None, source="test")
        store.add_codelet_runs([run])
    with HistoryStore(path) as store:
        (stored,) = store.codelet_runs(signature="sig")
        assert (stored.version, stored.cycles, stored.seconds, stored.output_bytes) == \
            ("accel-tiny", 1234, 0.25, 100)
        assert store.codelet_runs(version="cpu") == []


def test_stall_seeds_round_trip_and_a_version_5_file_keeps_its_rows_unseeded(tmp_path):
    path = tmp_path / "v5.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[:5]))
    db.execute("PRAGMA user_version = 5")
    db.execute("INSERT INTO runs (recorded_at, family, signature, signature_hash, config_name, config, "
               "device, read_latency, stall, features, counters, cycles, source) VALUES "
               "(1.0, 'gemm', '{}', 'h', 'tiny', '{}', 'verilator', 16, 0.4, '{}', '{\"cycles\": 9}', 9, "
               "'old')")
    db.commit()
    db.close()
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 6
        (old,) = store.records()
        assert old.stall_seed is None and old.cycles == 9
        for seed in (11, 22):
            record = _record(1, stall=0.4)
            record.stall_seed = seed
            store.add(record)
        store.add(_record(1, stall=0.1))
        signature, config = _record(1).signature, _record(1).config
        assert store.stall_seeds(signature, config, "verilator", 16, 0.4) == [11, 22]
        assert store.stall_seeds(signature, config, "verilator", 16, 0.1) == [None]
        assert store.stall_seeds(signature, config, "verilator", 16, 0.25) == []
        assert [r.stall_seed for r in store.records()] == [None, 11, 22, None]


def test_repeats_group_by_kernel_configuration_and_memory_system():
    from braze.sw.hpm.store import group_repeats

    records = [_record(1, stall=0.4), _record(2, stall=0.4), _record(1, stall=0.4), _record(1, stall=0.1)]
    records[2].config = dict(records[2].config)          # an equal configuration, another object
    other = _record(1, stall=0.4)
    other.config = {"rows": 8, "cols": 4}
    groups = group_repeats([*records, other])
    assert [[r.signature["shape"][0] for r in group] for group in groups] == [[1, 1], [2], [1], [1]]
    assert groups[0] == [records[0], records[2]]
