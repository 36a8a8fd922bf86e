"""The kernel cache: memory and disk, keyed by signature and configuration; a second compile is a hit."""

from __future__ import annotations

import numpy as np
from onnx_models import conv_model

from braze.isa import Config
from braze.sw.compiler.cache import KernelCache, cache_dir
from braze.sw.compiler.kernels import gemm
from braze.sw.runtime.session import InferenceSession

TINY = Config.preset("tiny")


def _build_counter():
    calls = []

    def build():
        calls.append(1)
        return gemm(TINY, 4, 8, 4, requant=True)
    return build, calls


def test_memory_and_disk_hits(tmp_path):
    build, calls = _build_counter()
    cache = KernelCache(tmp_path)
    signature = ("gemm", (4, 8, 4), (("requant", True),))
    first = cache.get_or_build(signature, TINY, build)
    assert cache.get_or_build(signature, TINY, build) is first
    assert len(calls) == 1 and cache.stats()["misses"] == 1 and cache.stats()["hits"] == 1
    fresh = KernelCache(tmp_path)                          # another process, the same directory
    again = fresh.get_or_build(signature, TINY, build)
    assert len(calls) == 1 and fresh.disk_hits == 1
    assert again.instructions == first.instructions
    assert again.operands == first.operands and again.predicted_cycles == first.predicted_cycles
    # The configuration is part of the key.
    fresh.get_or_build(signature, TINY.replace(name="tiny2", mem_latency=9), build)
    assert len(calls) == 2


def test_corrupt_entries_are_rebuilt(tmp_path):
    build, calls = _build_counter()
    signature = ("gemm", (4, 8, 4), (("requant", True),))
    KernelCache(tmp_path).get_or_build(signature, TINY, build)
    (entry,) = tmp_path.glob("*.pkl")
    entry.write_bytes(b"garbage")
    kernel = KernelCache(tmp_path).get_or_build(signature, TINY, build)
    assert len(calls) == 2 and kernel.instructions == build().instructions


def test_cache_directory_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here" / "kernels"
    monkeypatch.delenv("BRAZE_CACHE_DIR")
    assert cache_dir().parts[-3:] == (".cache", "braze", "kernels")


def test_second_compile_of_a_model_generates_no_kernel(tmp_path):
    calibration = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    first = KernelCache(tmp_path)
    InferenceSession(conv_model(4), config="tiny", calibration=calibration, cache=first)
    assert first.misses > 0
    second = KernelCache(tmp_path)
    session = InferenceSession(conv_model(4), config="tiny", calibration=calibration, cache=second)
    assert second.misses == 0 and second.disk_hits > 0
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)
    reference = InferenceSession(conv_model(4), config="tiny", calibration=calibration,
                                 cache=KernelCache(disk=False))
    assert np.array_equal(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0])
