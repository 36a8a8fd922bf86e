"""Calibration resumes and its history outlives the machine: kernels drawn alike in any process, pool
signatures that tell windows apart, runs ordered to cover every family, export and import of runs."""

from __future__ import annotations

import importlib
import lzma

import pytest

from braze.isa import Config
from braze.sw.compiler import cache as cache_module
from braze.sw.compiler import kernels as library
from braze.sw.compiler.kernels import matmul
from braze.sw.hpm.calibrate import calibration_kernels, coverage_order, record_run, refeature, tiling_variants
from braze.sw.hpm.features import FEATURE_VERSION, MemorySystem, kernel_family, kernel_signature
from braze.sw.hpm.store import HistoryError, HistoryStore, signature_hash

TINY = Config.preset("tiny")
#: The module (``braze.sw.hpm.calibrate`` is also the name of its function, which the package exports).
calibrate_module = importlib.import_module("braze.sw.hpm.calibrate")


def test_pool_signatures_carry_the_window():
    # Same input and output shapes and program length, other windows: one signature before the fix.
    narrow = library.maxpool2d(TINY, 1, 4, 3, 3, 1, 2, 2, 0)
    wide = library.maxpool2d(TINY, 1, 4, 3, 3, 2, 3, 3, 1)
    assert narrow.operands["out"].shape == wide.operands["out"].shape
    assert len(narrow.instructions) == len(wide.instructions)
    assert narrow.instructions != wide.instructions
    assert signature_hash(kernel_signature(narrow)) != signature_hash(kernel_signature(wide))
    assert (wide.tiling["kh"], wide.tiling["kw"], wide.tiling["stride"], wide.tiling["pad"]) == (2, 3, 3, 1)


#: Calibration's GEMM, element-wise and pool groups (its convolutions take a minute to generate on tiny).
_CHEAP_GROUPS = tuple(group for group in calibrate_module._GROUPS
                      if group[0] in ("gemm", "elementwise", "pool"))


def _draw(monkeypatch) -> list:
    # A cold kernel cache in memory only: each draw generates its kernels (the disk cache would hand
    # the second draw the first one's kernels whatever the memos held).
    monkeypatch.setattr(cache_module, "_DEFAULT", cache_module.KernelCache(disk=False))
    monkeypatch.setattr(calibrate_module, "_GROUPS", _CHEAP_GROUPS[:1])
    kernels = calibration_kernels(TINY, count=16, seed=3)
    return [(signature_hash(kernel_signature(k)), k.instructions) for k in kernels]


def test_calibration_kernels_do_not_depend_on_what_the_process_generated_before(monkeypatch):
    first = _draw(monkeypatch)
    # Fill the library's memos the way a compile does: forced tilings of the same GEMMs, generated
    # without pruning (a search then finds them remembered instead of ruling them out).
    gemm = library.gemm(TINY, 37, 64, 40)
    for tiling in [*tiling_variants(gemm), *library.candidate_tilings(gemm)]:
        try:
            library.gemm(TINY, 37, 64, 40, tiling=tiling)
        except library.KernelError:
            pass
    remembered = dict(matmul._GENERATED)
    assert remembered
    assert _draw(monkeypatch) == first
    # The process's own memos are back afterwards.
    assert matmul._GENERATED.keys() >= remembered.keys()


def test_coverage_order_interleaves_families_and_keeps_their_own_order(monkeypatch):
    monkeypatch.setattr(calibrate_module, "_GROUPS", _CHEAP_GROUPS)
    kernels = calibration_kernels(TINY, count=24, seed=3, tilings=False)
    ordered = coverage_order(kernels)
    assert sorted(map(id, ordered)) == sorted(map(id, kernels))
    families = [kernel_family(k) for k in ordered]
    distinct = list(dict.fromkeys(families))
    assert len(distinct) >= 5
    assert families[:len(distinct)] == distinct        # every family once before any twice
    for family in distinct:
        assert [k for k in ordered if kernel_family(k) == family] == \
               [k for k in kernels if kernel_family(k) == family]


def _runs(store: HistoryStore) -> list:
    return [(r.signature, r.config, r.stall, r.stall_seed, r.counters, r.features, r.program, r.recorded_at)
            for r in store.records(programs=True)]


def test_export_import_round_trip_refeatures_and_is_idempotent(tmp_path):
    kernels = [library.relu(TINY, (4, 8)), library.add(TINY, (16, 16))]
    source = HistoryStore(tmp_path / "a.sqlite")
    for index, kernel in enumerate(kernels * 2):
        stall = 0.25 * (index % 2)
        record = record_run(kernel, {"cycles": 500 + index, "stall_axi_read": 7}, device="verilator",
                            memory=MemorySystem(TINY.mem_latency, stall), source="calibrate")
        record.stall_seed = index
        source.add(record)
    source.add(record_run(kernels[0], {"cycles": 9}, device="verilator",
                          memory=MemorySystem.nominal(TINY), source="runtime"))
    path = tmp_path / "runs.jsonl.xz"
    assert source.export_runs(path) == 4                   # calibration runs only

    target = HistoryStore(tmp_path / "b.sqlite")
    assert target.import_runs(path) == (4, 0)
    assert _runs(target) == [run for run in _runs(source)[:4]]
    assert target.import_runs(path) == (0, 4)              # already there: nothing added twice

    # Without features, an import is refeatured from the programs: the same features again.
    bare = tmp_path / "bare.jsonl.xz"
    source.export_runs(bare, features=False)
    rebuilt = HistoryStore(tmp_path / "c.sqlite")
    assert rebuilt.import_runs(bare) == (4, 0)
    assert all(r.features == {} for r in rebuilt.records())
    report = refeature(rebuilt, progress=None)
    assert report.refeatured == 4 and report.left == 0
    assert [r.features for r in rebuilt.records()] == [r.features for r in source.records()[:4]]
    assert all(r.features["feature_version"] == FEATURE_VERSION for r in rebuilt.records())


def test_import_of_a_damaged_runs_file_is_a_clear_error_and_adds_nothing(tmp_path):
    source = HistoryStore(tmp_path / "a.sqlite")
    kernel = library.relu(TINY, (4, 8))
    for index in range(3):
        source.add(record_run(kernel, {"cycles": 100 + index}, device="verilator",
                              memory=MemorySystem.nominal(TINY), source="calibrate"))
    path = tmp_path / "runs.jsonl.xz"
    source.export_runs(path)
    lines = lzma.decompress(path.read_bytes()).decode().splitlines()
    truncated = tmp_path / "truncated.jsonl.xz"
    truncated.write_bytes(lzma.compress("\n".join(lines[:-1]).encode()))
    target = HistoryStore(tmp_path / "b.sqlite")
    with pytest.raises(HistoryError, match="truncated.jsonl.xz holds 2 runs, its header says 3"):
        target.import_runs(truncated)
    garbage = tmp_path / "garbage.jsonl.xz"
    garbage.write_bytes(b"not xz at all")
    with pytest.raises(HistoryError, match="garbage.jsonl.xz cannot be read"):
        target.import_runs(garbage)
    assert target.count() == 0
