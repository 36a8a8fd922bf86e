"""The Verilator build cache (:mod:`braze.sim.build`): keys, sharing between processes, crash recovery.

Verilator itself is replaced by a stand-in that writes a fake executable, so these tests check
the cache logic in milliseconds; the real builds are exercised by the device and cocotb tests.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from braze.sim import build


def _fake_verilate(verilog_path: Path, top: str, directory: Path, flags: list[str], waves: bool,
                   **options) -> dict[str, float]:
    time.sleep(0.3)         # long enough for the other processes to pile up on the lock
    (directory / top).write_text("#!/bin/sh\n")
    with open(directory.parent / "builds.log", "a") as log:
        log.write(f"{directory.name}\n")
    return {"verilate": 0.3}


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
    def broken(verilog_path, top, directory, flags, waves, **options):
        raise build.ToolError(f"the Verilator build of {top} failed: syntax error")

    monkeypatch.setattr(build, "_verilate", broken)
    with pytest.raises(build.ToolError, match="syntax error"):
        build.cached_build("demo", {"design": "bad"}, "demo_top", lambda: "module\n", root=tmp_path)
    # Defect 3: a failed build left its folder in the cache.
    assert not [path for path in tmp_path.iterdir() if path.is_dir() and path.name.startswith("demo-")]


def test_a_design_that_cannot_be_generated_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    """Defect 3: a harness Amaranth could not generate left an empty build folder (with a lock)."""
    monkeypatch.setattr(build, "_verilate", _fake_verilate)

    def unbuildable():
        raise ValueError("this design cannot be generated")

    root = tmp_path / "verilator"
    with pytest.raises(ValueError, match="cannot be generated"):
        build.cached_build("demo", {"design": "bad"}, "demo_top", unbuildable, root=root, progress=None)
    assert not root.exists()
    # Another build's files stay where they are.
    good = build.cached_build("demo", {"design": "good"}, "demo_top", lambda: "// good\n", root=root)
    before = sorted(path.relative_to(root) for path in root.rglob("*"))
    with pytest.raises(ValueError):
        build.cached_build("demo", {"design": "bad"}, "demo_top", unbuildable, root=root, progress=None)
    assert sorted(path.relative_to(root) for path in root.rglob("*")) == before
    assert build.cached_build("demo", {"design": "good"}, "demo_top", lambda: "// good\n", root=root).cached
    assert good.executable.exists()


def test_same_verilog_from_another_key_reuses_the_model(tmp_path, monkeypatch):
    """The model is keyed by the Verilog text: a generator change that leaves it alone rebuilds nothing."""
    monkeypatch.setattr(build, "_verilate", _fake_verilate)
    generated = []

    def make(parts: dict, text: str):
        def generate():
            generated.append(text)
            return text
        return build.cached_build("demo", parts, "demo_top", generate, root=tmp_path, progress=None)

    first = make({"design": "x", "revision": 1}, "// x\n")
    second = make({"design": "x", "revision": 2}, "// x\n")      # a new key, the same Verilog
    assert not first.cached and second.cached
    assert second.directory == first.directory
    assert generated == ["// x\n", "// x\n"]
    assert make({"design": "x", "revision": 2}, "// x\n").cached
    assert generated == ["// x\n", "// x\n"], "cached Verilog was generated again"
    third = make({"design": "x", "revision": 3}, "// y\n")
    assert not third.cached and third.directory != first.directory


def test_only_hardware_sources_key_the_verilog(tmp_path, monkeypatch):
    """Editing the compiler, the reference model or the assembler must not regenerate any Verilog."""
    tree = tmp_path / "tree"
    for folder in ("hw", "isa", "sim", "sw"):
        shutil.copytree(build._PACKAGE_ROOT / folder, tree / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(build, "_PACKAGE_ROOT", tree)
    before = build.source_digest()
    for path in ("sw/runtime/session.py", "isa/model.py", "isa/asm.py", "isa/doc.py",
                 "sim/verilator_device.py"):
        with open(tree / path, "a") as source:
            source.write("\n# an edit\n")
        assert build.source_digest() == before, f"editing {path} would regenerate the Verilog"
    for path in ("hw/top.py", "isa/encoding.py", "sim/harness.py"):
        with open(tree / path, "a") as source:
            source.write("\n# an edit\n")
        after = build.source_digest()
        assert after != before, f"editing {path} must regenerate the Verilog"
        before = after


def test_build_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "_verilate", _fake_verilate)
    lines = []
    build.cached_build("demo", {"design": "p"}, "demo_top", lambda: "// p\n", root=tmp_path,
                       progress=lines.append)
    assert any("generating Verilog" in line for line in lines)
    assert any("built in" in line for line in lines)
    lines.clear()
    build.cached_build("demo", {"design": "p"}, "demo_top", lambda: "// p\n", root=tmp_path,
                       progress=lines.append)
    assert lines == [], "a cache hit should be silent"


def test_generated_verilog_is_the_same_in_every_process():
    """The model is keyed by the Verilog text: generation must not depend on Python's string hashing."""
    script = ("import hashlib\n"
              "from braze.isa import Config\n"
              "from braze.sim.harness import Harness, harness_verilog\n"
              "text = harness_verilog(Harness(Config.preset('tiny'), host_bridge=True))\n"
              "print(hashlib.sha256(text.encode()).hexdigest())\n")
    digests = set()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert done.returncode == 0, done.stderr
        digests.add(done.stdout.strip())
    assert len(digests) == 1, "the same design gave two Verilog texts"


def test_the_simulator_finds_this_environments_cocotb_libraries(tmp_path):
    """A cached executable's rpath names the cocotb libraries of whichever environment built it
    (the cache is shared by environments with the same cocotb version); that environment may be
    gone, so the simulator's environment points at this one's copy."""
    import cocotb_tools.config

    from braze.sim.verilator_device import simulator_env

    result = build.BuildResult(directory=tmp_path, executable=tmp_path / "x", top="braze_tiny_harness",
                               verilog=tmp_path / "x.v", cached=True, seconds={}, waves=False)
    env = simulator_env(result, "braze.sim.cocotb_server")
    first = env["LD_LIBRARY_PATH"].split(os.pathsep)[0]
    assert Path(first) == Path(cocotb_tools.config.libs_dir)
    assert (Path(first) / "libcocotbvpi_verilator.so").exists()
