"""The kernel cache: memory and disk, keyed by signature and configuration; a second compile is a hit.

An entry that is corrupt or tampered with is rejected with a warning and rebuilt, never trusted or
unpickled."""

from __future__ import annotations

import json
import multiprocessing
import pathlib
import pickle
import re
import warnings

import numpy as np
import pytest
from onnx_models import conv_model

from braze.isa import Config, Opcode, decode
from braze.isa.encoding import FORMAT_BY_OPCODE
from braze.sw.compiler import cache as cache_module
from braze.sw.compiler import kernels as kernels_package
from braze.sw.compiler.cache import KernelCache, KernelCacheWarning, cache_dir
from braze.sw.compiler.kernels import KernelError, gemm
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


SIGNATURE = ("gemm", (4, 8, 4), (("requant", True),))


def _one_entry(directory):
    (entry,) = directory.glob("*.json")
    return entry


@pytest.mark.parametrize("content", [b"garbage", b"", b'{"format": "braze-kernel-cache"}', b"[1, 2]",
                                     b"\xff\xfe not utf-8"])
def test_corrupt_entries_are_rejected_with_a_warning_and_rebuilt(tmp_path, content):
    build, calls = _build_counter()
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    entry = _one_entry(tmp_path)
    entry.write_bytes(content)
    cache = KernelCache(tmp_path)
    with pytest.warns(KernelCacheWarning, match=re.escape(str(entry))):
        kernel = cache.get_or_build(SIGNATURE, TINY, build)
    assert len(calls) == 2 and cache.rejected == 1
    assert kernel.instructions == gemm(TINY, 4, 8, 4, requant=True).instructions
    # The rebuilt kernel was written back: the next process reads it without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = KernelCache(tmp_path)
        assert again.get_or_build(SIGNATURE, TINY, build).instructions == kernel.instructions
    assert again.disk_hits == 1 and len(calls) == 2


def _flip_a_load_address(entry):
    """Move the first LOAD of the entry 4 bytes in external memory, leaving the stored hash as it was.

    The result is a legal program that reads the wrong bytes: trusted, it gives wrong outputs."""
    stored = json.loads(entry.read_text())
    words = stored["kernel"]["words"]
    index = next(i for i, text in enumerate(words)
                 if decode(int(text, 16)).opcode is Opcode.LOAD and not decode(int(text, 16)).zero)
    (dram_offset,) = [offset for spec, offset, _ in FORMAT_BY_OPCODE[Opcode.LOAD].slots
                      if spec.name == "dram"]
    flipped = int(words[index], 16) ^ (1 << (dram_offset + 2))
    assert decode(flipped).dram != decode(int(words[index], 16)).dram
    words[index] = f"{flipped:032x}"
    entry.write_text(json.dumps(stored))


def test_a_flipped_instruction_word_is_detected_rebuilt_and_results_stay_right(tmp_path):
    """Defect 1: an entry that still parses but has one changed word used to give wrong logits."""
    calibration = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)
    reference = InferenceSession(conv_model(4), config="tiny", calibration=calibration,
                                 cache=KernelCache(disk=False)).run(None, {"x": x})[0]
    InferenceSession(conv_model(4), config="tiny", calibration=calibration, cache=KernelCache(tmp_path))
    # Every kernel entry (the others remember tiling candidates that cannot be generated).
    entries = [entry for entry in sorted(tmp_path.glob("*.json"))
               if "words" in json.loads(entry.read_text())["kernel"]]
    assert entries
    for entry in entries:
        _flip_a_load_address(entry)
    cache = KernelCache(tmp_path)
    with pytest.warns(KernelCacheWarning, match="content hash mismatch") as caught:
        session = InferenceSession(conv_model(4), config="tiny", calibration=calibration, cache=cache)
    assert cache.rejected == len(entries) == cache.misses          # every kernel entry rebuilt
    assert {str(entry) for entry in entries} <= {str(w.message).split()[3] for w in caught}
    assert np.array_equal(session.run(None, {"x": x})[0], reference)
    # The entries were rewritten whole: a fresh process trusts them again.
    fresh = KernelCache(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        InferenceSession(conv_model(4), config="tiny", calibration=calibration, cache=fresh)
    assert fresh.misses == 0 and fresh.rejected == 0


class _Detonator:
    """Unpickling this object creates ``path``: proof that the cache ran a pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_pickle_payload_is_never_unpickled(tmp_path):
    build, calls = _build_counter()
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    entry = _one_entry(tmp_path)
    marker = tmp_path / "unpickled"
    entry.write_bytes(pickle.dumps(_Detonator(str(marker))))
    with pytest.warns(KernelCacheWarning, match="not a JSON cache entry"):
        kernel = KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    assert not marker.exists()
    assert len(calls) == 2 and kernel.instructions == gemm(TINY, 4, 8, 4, requant=True).instructions
    pickle.loads(pickle.dumps(_Detonator(str(marker))))          # the payload is live: it does fire
    assert marker.exists()


def test_a_stale_version_is_not_used(tmp_path, monkeypatch):
    build, calls = _build_counter()
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    entry = _one_entry(tmp_path)
    stored = json.loads(entry.read_text())
    stored["version"] = cache_module.CACHE_VERSION - 1
    entry.write_text(json.dumps(stored))
    with pytest.warns(KernelCacheWarning, match="version"):
        KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    assert len(calls) == 2


def test_a_changed_pipeline_depth_misses_the_cache(tmp_path, monkeypatch):
    """Kernels carry predicted cycles and tilings chosen by the timing model: an RTL pipeline
    made deeper (EPILOGUE_LATENCY 8 -> 9 did it) must not be served the old entries."""
    build, calls = _build_counter()
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    monkeypatch.setattr(cache_module, "EPILOGUE_LATENCY", cache_module.EPILOGUE_LATENCY + 1)
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    assert len(calls) == 2


def test_changed_library_code_misses_the_cache(tmp_path, monkeypatch):
    """An entry written by another version of the kernel library (a changed tiling rule) is not
    reused, though its program would still be valid: the key holds a hash of the generator's code."""
    build, calls = _build_counter()
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    assert len(calls) == 1
    library = tmp_path / "library"
    library.mkdir()
    sources = sorted(pathlib.Path(kernels_package.__file__).parent.glob("*.py"))
    for path in sources:
        (library / path.name).write_bytes(path.read_bytes())
    (library / sources[0].name).write_bytes(sources[0].read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(kernels_package, "__file__", str(library / "__init__.py"))
    cache_module._generator_fingerprint.cache_clear()
    try:
        KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)
    finally:
        monkeypatch.undo()
        cache_module._generator_fingerprint.cache_clear()
    assert len(calls) == 2
    KernelCache(tmp_path).get_or_build(SIGNATURE, TINY, build)      # the original code: its entry again
    assert len(calls) == 2


def _hammer(directory, seed, rounds):
    """One process of the concurrency test: build, read and rewrite a few shared entries."""
    warnings.simplefilter("error")                 # any rejected entry fails the process
    rng = np.random.default_rng(seed)
    shapes = [(4, 8, 4), (8, 4, 4), (4, 4, 8)]
    for _ in range(rounds):
        m, k, n = shapes[rng.integers(len(shapes))]
        cache = KernelCache(directory)
        kernel = cache.get_or_build(("gemm", (m, k, n)), TINY, lambda m=m, k=k, n=n: gemm(TINY, m, k, n))
        if kernel.instructions != gemm(TINY, m, k, n).instructions:
            raise AssertionError(f"wrong kernel for {(m, k, n)}")
        if rng.random() < 0.5:                     # a concurrent writer of an entry others read
            cache._store(directory / f"{cache_module._key(('gemm', (m, k, n)), TINY)}.json",
                         cache_module._key(("gemm", (m, k, n)), TINY), kernel)


def test_concurrent_readers_and_writers(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hammer, args=(tmp_path, seed, 25)) for seed in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    assert len(list(tmp_path.glob("*.json"))) == 3 and not list(tmp_path.glob("*.tmp"))


def test_a_kernel_that_cannot_be_generated_is_remembered(tmp_path):
    attempts = []

    def impossible():
        attempts.append(1)
        raise KernelError("does not fit")

    signature = ("gemm", (4096, 4096, 4096), ())
    cache = KernelCache(tmp_path)
    for _ in range(2):
        with pytest.raises(KernelError, match="does not fit"):
            cache.get_or_build(signature, TINY, impossible)
    assert len(attempts) == 1 and cache.misses == 1 and cache.hits == 1
    fresh = KernelCache(tmp_path)                          # another process: the failure is on disk
    with pytest.raises(KernelError, match="does not fit"):
        fresh.get_or_build(signature, TINY, impossible)
    assert len(attempts) == 1 and fresh.disk_hits == 1 and fresh.misses == 0
    # Other exceptions are not remembered: they are bugs, not properties of the signature.
    with pytest.raises(ZeroDivisionError):
        cache.get_or_build(("other",), TINY, lambda: 1 / 0)
    assert not (tmp_path / f"{cache_module._key(('other',), TINY)}.json").exists()


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
