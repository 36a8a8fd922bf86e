"""Kernel features: one pass of keys for the analytic schedule and the baseline, remembered per program."""

from __future__ import annotations

import json

import pytest

from braze.isa import Config, Instruction, Opcode, Unit
from braze.isa.timing import schedule
from braze.sw.compiler import kernels
from braze.sw.hpm import features as features_module
from braze.sw.hpm.features import (
    MemorySystem,
    feature_cache_dir,
    kernel_features,
    memory_aware_cycles,
    program_features,
)

TINY = Config.preset("tiny")


@pytest.fixture
def conv():
    # A strided, padded convolution with the fused epilogue: LOADs, MATMULs, EPILOGUEs, STOREs.
    return kernels.conv2d(TINY, 2, 3, 6, 6, 4, 3, 3, 2, 1, bias=True, requant=True, act="relu")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BRAZE_HPM_FEATURE_CACHE", raising=False)
    features_module._FEATURES.clear()
    yield tmp_path
    features_module._FEATURES.clear()


@pytest.mark.parametrize("memory", [MemorySystem(TINY.mem_latency, 0.0), MemorySystem(TINY.mem_latency, 0.3),
                                    MemorySystem(TINY.mem_latency + 9, 0.1)])
def test_features_agree_with_the_schedules_they_summarise(conv, memory):
    features = program_features(conv.instructions, TINY, memory)
    plain = schedule([*conv.instructions, Instruction.make(Opcode.HALT)], TINY)
    assert features["analytic_cycles"] == plain.cycles
    for unit in ("load", "compute", "store"):
        busy = sum(e.end - e.start for e in plain.entries if e.unit is Unit[unit.upper()])
        assert features[f"analytic_{unit}_busy_share"] == busy / plain.cycles
    # The baseline from the keys shared with the analytic schedule equals the stand-alone function.
    assert features["baseline_cycles"] == memory_aware_cycles(conv.instructions, TINY, memory)
    assert features["baseline_cycles"] >= features["analytic_cycles"]


def test_features_are_remembered_in_memory_and_on_disk(conv, cache_dir):
    memory = MemorySystem(TINY.mem_latency, 0.2)
    fresh = program_features(conv.instructions, TINY, memory)
    first = kernel_features(conv, TINY, memory)
    assert first == fresh
    stored = list(feature_cache_dir().glob("*.json"))
    assert len(stored) == 1 and stored[0].parent == cache_dir / "hpm-features"
    first["macs"] = -1                      # callers get their own copy
    assert kernel_features(conv, TINY, memory) == fresh
    features_module._FEATURES.clear()       # a new process: from disk
    assert kernel_features(conv, TINY, memory) == fresh
    # Another memory system is another entry, with other values.
    other = kernel_features(conv, TINY, MemorySystem(TINY.mem_latency, 0.0))
    assert other["stall"] == 0.0 and other["baseline_cycles"] < fresh["baseline_cycles"]
    assert len(list(feature_cache_dir().glob("*.json"))) == 2


def test_a_damaged_or_foreign_entry_is_recomputed(conv, cache_dir):
    memory = MemorySystem.nominal(TINY)
    fresh = program_features(conv.instructions, TINY, memory)
    kernel_features(conv, TINY, memory)
    (path,) = feature_cache_dir().glob("*.json")
    for damage in (b"{not json", json.dumps({"key": "another", "features": {"macs": 1}}).encode()):
        path.write_bytes(damage)
        features_module._FEATURES.clear()
        assert kernel_features(conv, TINY, memory) == fresh


def test_the_disk_cache_can_be_switched_off(conv, cache_dir, monkeypatch):
    monkeypatch.setenv("BRAZE_HPM_FEATURE_CACHE", "0")
    assert kernel_features(conv) == program_features(conv.instructions, TINY)
    assert not feature_cache_dir().exists()


def test_another_program_is_another_entry(cache_dir):
    small = kernels.gemm(TINY, 8, 16, 8)
    large = kernels.gemm(TINY, 24, 16, 8)
    assert kernel_features(small)["macs"] == 8 * 16 * 8
    assert kernel_features(large)["macs"] == 24 * 16 * 8
