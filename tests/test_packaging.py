"""The distribution installs as documented: editable for development, and as a wheel."""

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("isa", "hw", "sim", "sw")


def test_editable_install_maps_top_level_folders():
    import braze

    for name in SUBPACKAGES:
        module = __import__(f"braze.{name}", fromlist=["_"])
        assert Path(module.__file__).resolve() == ROOT / name / "__init__.py"
    assert Path(braze.__file__).resolve() == ROOT / "braze" / "__init__.py"
    assert braze.Config is __import__("braze.isa", fromlist=["Config"]).Config


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _run(*args, cwd):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_wheel_installs_into_clean_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", dist, ROOT, cwd=tmp_path)
    (wheel,) = dist.glob("braze-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("braze/__init__.py", "braze/isa/encoding.py", "braze/hw/__init__.py",
                     "braze/sim/__init__.py", "braze/sw/__init__.py",
                     "braze/sw/compiler/kernels/__init__.py", "braze/sw/compiler/kernels/matmul.py",
                     "braze/sw/runtime/session.py", "braze/sw/dse/area_calibration.json"):
        assert expected in names, f"{expected} missing from {wheel.name}"
    assert any(name.startswith("braze/examples/") and name.endswith(".s") for name in names)
    assert not any(name.startswith(("isa/", "hw/", "tests/")) for name in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", wheel, cwd=tmp_path)
    probe = ("import braze, braze.isa, braze.hw, braze.sim, braze.sw, braze.sw.compiler, braze.sw.runtime;"
             "print(braze.isa.__file__); print(braze.isa.Config.preset('default').rows)")
    result = _run(python, "-c", probe, cwd=tmp_path)
    isa_file, rows = result.stdout.split()
    assert Path(isa_file).resolve().is_relative_to(env_dir.resolve())
    assert rows == "8"
    result = _run(env_dir / "bin" / "braze", "configs", cwd=tmp_path)
    assert "default" in result.stdout and "large" in result.stdout
