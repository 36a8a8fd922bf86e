"""Design-space results in the performance history: schema migration 5, replace-on-rewrite."""

from __future__ import annotations

import sqlite3

from braze.sw.hpm.store import MIGRATIONS, SCHEMA_VERSION, CodeletRun, DseResult, HistoryStore


def test_a_version_4_file_gains_the_dse_table_keeping_its_rows(tmp_path):
    path = tmp_path / "v4.sqlite"
    db = sqlite3.connect(path)
    db.executescript("".join(MIGRATIONS[:4]))
    db.execute("PRAGMA user_version = 4")
    db.execute("INSERT INTO codelet_runs (recorded_at, program, codelet, signature, pattern, version, fleet, "
               "worker, seconds, output_bytes, serialize_seconds, source) VALUES "
               "(1.0, 'p', 'c', 's', 'matmul', 'cpu', 'f', 'w', 0.5, 10, 0.0, 'old')")
    db.commit()
    db.close()
    with HistoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION >= 5
        (old,) = store.codelet_runs()
        assert isinstance(old, CodeletRun) and old.seconds == 0.5
        assert store.dse_results("gemm:8x8x8") == []
        store.add_dse_results([DseResult("gemm:8x8x8", {"name": "dse_r4", "rows": 4}, {"cycles": 120.0},
                                         "learned")])
    with HistoryStore(path) as store:
        (stored,) = store.dse_results("gemm:8x8x8")
        assert (stored.config_name, stored.metrics, stored.predictor, stored.measured_cycles) == \
            ("dse_r4", {"cycles": 120.0}, "learned", None)
        # The same workload and configuration again (a finalist measured): replaced, not added.
        store.add_dse_results([DseResult("gemm:8x8x8", {"name": "dse_r4", "rows": 4}, {"cycles": 120.0},
                                         "learned", 118, "verilator")])
        store.add_dse_results([DseResult("gemm:16x8x8", {"name": "dse_r4", "rows": 4}, {"cycles": 7.0},
                                         "analytic-mem")])
        (again,) = store.dse_results("gemm:8x8x8")
        assert (again.measured_cycles, again.measured_device) == (118, "verilator")
        assert [r.metrics["cycles"] for r in store.dse_results("gemm:16x8x8")] == [7.0]
