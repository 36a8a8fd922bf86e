"""The Verilator build cache (:mod:`braze.sim.build`): keys, sharing between processes, crash recovery.

Verilator itself is replaced by a stand-in that writes a fake executable, so these tests check
the cache logic in milliseconds; the real builds are exercised by the device and cocotb tests.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from braze.sim import build


def _fake_verilate(verilog_path: Path, top: str, directory: Path, flags: list[str], waves: bool) -> None:
    time.sleep(0.3)         # long enough for the other processes to pile up on the lock
    (directory / top).write_text("#!/bin/sh\n")
    with open(directory.parent / "builds.log", "a") as log:
        log.write(f"{directory.name}\n")


def _build_in_child(root: str, design: str) -> tuple[bool, str]:
    build._verilate = _fake_verilate
    result = build.cached_build("demo", {"design": design}, "demo_top", lambda: f"// {design}\n",
                                root=Path(root))
    return result.cached, str(result.directory)


def test_concurrent_builders_share_one_build(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.starmap(_build_in_child, [(str(tmp_path), "same")] * 4)
    assert sorted(cached for cached, _ in results) == [False, True, True, True]
    assert len({directory for _, directory in results}) == 1
    assert (tmp_path / "builds.log").read_text().count("\n") == 1


def test_key_depends_on_the_design_and_waves(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_verilate", _fake_verilate)

    def make(design: str, waves: bool = False):
        return build.cached_build("demo", {"design": design}, "demo_top", lambda: f"// {design}\n",
                                  waves=waves, root=tmp_path)

    first = make("a")
    assert not first.cached and first.executable.exists()
    assert first.verilog.read_text() == "// a\n"
    assert make("a").cached
    assert make("a").directory == first.directory
    other = make("b")
    traced = make("a", waves=True)
    assert not other.cached and not traced.cached
    assert len({first.directory, other.directory, traced.directory}) == 3


def test_half_finished_build_is_redone(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_verilate", _fake_verilate)
    first = build.cached_build("demo", {"design": "x"}, "demo_top", lambda: "// x\n", root=tmp_path)
    (first.directory / "build.json").unlink()       # as if the builder died before finishing
    (first.directory / "junk.o").write_text("")
    again = build.cached_build("demo", {"design": "x"}, "demo_top", lambda: "// x\n", root=tmp_path)
    assert not again.cached
    assert not (again.directory / "junk.o").exists()


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert build.cache_dir() == tmp_path / "elsewhere" / "verilator"
    monkeypatch.delenv("BRAZE_CACHE_DIR")
    assert build.cache_dir() == Path.home() / ".cache" / "braze" / "verilator"


def test_failing_build_reports_the_log(tmp_path, monkeypatch):
    def broken(verilog_path, top, directory, flags, waves):
        raise build.ToolError(f"the Verilator build of {top} failed: syntax error")

    monkeypatch.setattr(build, "_verilate", broken)
    with pytest.raises(build.ToolError, match="syntax error"):
        build.cached_build("demo", {"design": "bad"}, "demo_top", lambda: "module\n", root=tmp_path)
