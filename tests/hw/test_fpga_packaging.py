"""The register map as a C header and SVD, and the FuseSoC core, as ``braze rtl`` writes them.

Each is checked against the manifest (itself generated from :data:`braze.hw.csr.REGISTERS`) by
the tool that reads it: gcc for the header, an XML parser for the SVD, YAML and FuseSoC itself
(whose lint target runs Verilator through Edalize) for the core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from braze.hw.csr import REGISTERS
from braze.hw.packaging import SVD_ACCESS, core_name
from braze.hw.rtl import build
from braze.hw.toolchain import verilator_env
from braze.isa import Config

# One worker runs the whole module: the module's `tiny` Verilog (~9 s) is generated once, not once per worker.
pytestmark = pytest.mark.xdist_group("fpga-packaging")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("rtl")
    result = build(Config.preset("tiny"), directory, lint=False)
    return result, json.loads(result.manifest.read_text())


def test_rtl_writes_the_packaging_files(tiny):
    result, _ = tiny
    directory = result.manifest.parent
    assert result.packaging == {"c_header": directory / "braze_tiny_regs.h",
                                "svd": directory / "braze_tiny.svd", "fusesoc": directory / "braze_tiny.core"}
    assert all(path.stat().st_size > 0 for path in result.packaging.values())


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_header_compiles_and_agrees_with_the_manifest(tiny, tmp_path):
    """gcc itself checks every offset, constant value and field of the header against the manifest."""
    result, manifest = tiny
    checks = [f'#include "{result.packaging["c_header"].name}"']
    for reg in manifest["registers"]["registers"]:
        name = f"BRAZE_TINY_{reg['name']}"
        checks.append(f"_Static_assert({name}_OFFSET == {reg['offset']}u, \"{name}\");")
        if "value" in reg:
            checks.append(f"_Static_assert({name}_VALUE == {reg['value']}u, \"{name} value\");")
        for field in reg["fields"]:
            prefix = f"{name}_{field['name'].upper()}"
            mask = ((1 << field["width"]) - 1) << field["lsb"]
            checks.append(f"_Static_assert({prefix}_LSB == {field['lsb']}u && {prefix}_WIDTH == "
                          f"{field['width']}u && {prefix}_MASK == {mask}u, \"{prefix}\");")
    for cause, value in manifest["registers"]["error_causes"].items():
        checks.append(f"_Static_assert(BRAZE_TINY_ERROR_{cause} == {value}u, \"{cause}\");")
    for counter in manifest["counters"]:
        index = f"BRAZE_TINY_COUNTER_{counter['name'].upper()}_INDEX"
        checks.append(f"_Static_assert({index} == {counter['index']}u, \"{index}\");")
    extent = manifest["registers"]["extent_bytes"]
    checks.append(f"_Static_assert(BRAZE_TINY_REG_EXTENT == {extent}u, \"extent\");")
    source = tmp_path / "check.c"
    source.write_text("\n".join(checks) + "\n")
    done = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                           "-I", str(result.packaging["c_header"].parent), str(source)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(checks) > 2 * len(REGISTERS)   # an offset and at least one field each

    # gcc really evaluates the assertions: one wrong offset fails.
    ctrl = next(reg["offset"] for reg in manifest["registers"]["registers"] if reg["name"] == "CTRL")
    source.write_text(f'#include "braze_tiny_regs.h"\n'
                      f'_Static_assert(BRAZE_TINY_CTRL_OFFSET == {ctrl + 4}u, "wrong");\n')
    include = str(result.packaging["c_header"].parent)
    done = subprocess.run(["gcc", "-fsyntax-only", "-I", include, str(source)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "wrong" in done.stderr


def test_svd_parses_and_agrees_with_the_manifest(tiny):
    result, manifest = tiny
    device = ET.parse(result.packaging["svd"]).getroot()
    assert device.tag == "device" and device.findtext("name") == "BRAZE_TINY"
    peripheral = device.find("peripherals/peripheral")
    assert int(peripheral.findtext("addressBlock/size"), 0) == manifest["registers"]["extent_bytes"]
    registers = peripheral.findall("registers/register")
    expected = manifest["registers"]["registers"]
    assert [r.findtext("name") for r in registers] == [reg["name"] for reg in expected]
    for element, reg in zip(registers, expected, strict=True):
        assert int(element.findtext("addressOffset"), 0) == reg["offset"]
        assert element.findtext("access") == ("read-only" if reg["access"] == "ro" else "read-write")
        reset = element.findtext("resetValue")
        assert (int(reset, 0) if reset is not None else None) == reg.get("value")
        fields = element.findall("fields/field")
        assert [(f.findtext("name"), int(f.findtext("bitOffset")), int(f.findtext("bitWidth")))
                for f in fields] == [(f["name"], f["lsb"], f["width"]) for f in reg["fields"]]
        for field, entry in zip(fields, reg["fields"], strict=True):
            access, modified = SVD_ACCESS[entry["access"]]
            assert field.findtext("access") == access
            assert field.findtext("modifiedWriteValues") == modified
    status_done = next(f for r in registers if r.findtext("name") == "STATUS"
                       for f in r.findall("fields/field") if f.findtext("name") == "done")
    assert status_done.findtext("modifiedWriteValues") == "oneToClear"


def test_fusesoc_core_parses_with_the_right_files(tiny):
    result, manifest = tiny
    text = result.packaging["fusesoc"].read_text()
    assert text.splitlines()[0] == "CAPI=2:"
    core = yaml.safe_load(text)
    assert core["name"] == core_name(manifest) == "braze:accelerator:braze_tiny:0.1.0"
    assert core["filesets"]["rtl"]["files"] == [result.verilog.name]
    assert (result.packaging["fusesoc"].parent / core["filesets"]["rtl"]["files"][0]).exists()
    lint = core["targets"]["lint"]
    assert lint["toplevel"] == manifest["top"] and lint["default_tool"] == "verilator"
    assert lint["tools"]["verilator"]["mode"] == "lint-only"
    assert lint["tools"]["verilator"]["verilator_options"] == \
        ["-Wall", *(f"-Wno-{name}" for name in manifest["verilator_waivers"])]


def _fusesoc_lint(cores_root: Path, build_root: Path, vlnv: str) -> subprocess.CompletedProcess:
    env = verilator_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "fusesoc.main", "--cores-root", str(cores_root), "run",
                           "--build-root", str(build_root), "--target", "lint", vlnv],
                          capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_fusesoc_lint_target_runs_verilator(tiny, tmp_path):
    """FuseSoC runs the core's lint target (Edalize, Verilator): clean with the waivers, failing without."""
    result, manifest = tiny
    cores = tmp_path / "cores"
    cores.mkdir()
    shutil.copy(result.verilog, cores)
    shutil.copy(result.packaging["fusesoc"], cores)
    done = _fusesoc_lint(cores, tmp_path / "build", core_name(manifest))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lint-verilator" in done.stdout + done.stderr

    # Without the waivers Verilator's -Wall warns on Amaranth's Verilog, and the target fails.
    core = result.packaging["fusesoc"].read_text()
    (cores / "braze_tiny.core").write_text(core.replace('"-Wno-WIDTHEXPAND", ', ""))
    done = _fusesoc_lint(cores, tmp_path / "build2", core_name(manifest))
    assert done.returncode != 0
    assert "WIDTHEXPAND" in done.stdout + done.stderr
