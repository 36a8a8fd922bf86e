"""Verilog generation: every preset converts and lints clean, the manifest matches the Verilog,
``tiny`` synthesizes, and the ``braze rtl`` command reports bad input as one-line errors."""

from __future__ import annotations

import json
import re

import pytest
from amaranth.back import verilog as amaranth_verilog

from braze.cli import main
from braze.hw.csr import REGISTERS
from braze.hw.rtl import build, verilog_ports
from braze.hw.toolchain import VERILATOR_WAIVERS, synth_report
from braze.hw.uart import UARTTransmitter
from braze.isa import COUNTERS, BrazeError, Config


@pytest.mark.parametrize("preset", ["tiny", "default", "large"])
def test_preset_generates_and_lints_clean(preset, tmp_path):
    config = Config.preset(preset)
    result = build(config, tmp_path, lint=True)
    name = f"braze_{preset}"
    assert result.verilog == tmp_path / f"{name}.v"
    assert result.lint_output is not None
    assert "%Warning" not in result.lint_output and "%Error" not in result.lint_output

    text = result.verilog.read_text()
    manifest = json.loads(result.manifest.read_text())
    assert manifest["top"] == name
    assert manifest["config"]["name"] == preset and manifest["config"]["rows"] == config.rows
    # The manifest's ports are exactly the Verilog top's, with directions and widths.
    declared = verilog_ports(text, name)
    assert sorted(declared, key=lambda p: p["name"]) == sorted(manifest["ports"], key=lambda p: p["name"])
    by_name = {port["name"]: port for port in declared}
    assert by_name["m_axi_rdata"] == {"name": "m_axi_rdata", "direction": "input",
                                      "width": config.dma_bus_bits}
    assert by_name["m_axi_awaddr"]["direction"] == "output" and by_name["m_axi_awaddr"]["width"] == 32
    assert by_name["s_axil_rdata"] == {"name": "s_axil_rdata", "direction": "output", "width": 32}
    assert by_name["irq"]["direction"] == "output"
    assert not any("__" in port for port in by_name)
    assert [reg["name"] for reg in manifest["registers"]["registers"]] == [reg.name for reg in REGISTERS]
    assert [c["name"] for c in manifest["counters"]] == [spec.name for spec in COUNTERS]
    assert manifest["verilator_waivers"] == VERILATOR_WAIVERS


def test_synth_report_of_a_small_block(tmp_path):
    """``synth_report``'s two Yosys runs (generic cells, iCE40 resources) on the UART transmitter: a
    shift register and a baud counter, so flip-flops, LUTs and carries but no RAM or DSP."""
    verilog = tmp_path / "uart_tx.v"
    verilog.write_text(amaranth_verilog.convert(UARTTransmitter(divisor=217), name="uart_tx"))
    report = synth_report(verilog, "uart_tx")
    assert report["generic"]["cells"] == sum(report["generic"]["cells_by_type"].values()) > 0
    assert any("DFF" in cell for cell in report["generic"]["cells_by_type"])       # its registers
    ice40 = report["ice40"]
    assert ice40["luts"] > 0 and ice40["ffs"] > 0 and ice40["carries"] > 0
    assert ice40["brams"] == 0 and ice40["dsps"] == 0


def test_cli_writes_files(tmp_path, capsys):
    """A custom configuration names the top after itself; the directory is created."""
    out = tmp_path / "out"
    assert main(["rtl", "--config", "tiny:dma_bus_bits=128", "-o", str(out), "--no-lint"]) == 0
    assert (out / "braze_tiny_custom.v").exists()
    manifest = json.loads((out / "braze_tiny_custom.json").read_text())
    assert manifest["top"] == "braze_tiny_custom" and manifest["config"]["dma_bus_bits"] == 128
    assert "braze_tiny_custom.v" in capsys.readouterr().out


def test_cli_synth_writes_report_and_table(tmp_path, capsys, monkeypatch):
    """The --synth plumbing (report file, table) with the Yosys runs replaced by a fixed report."""
    import braze.hw.rtl as rtl

    fake = {"generic": {"cells": 1234, "cells_by_type": {"$_AND_": 1234}},
            "ice40": {"luts": 111, "carries": 22, "dsps": 3, "ffs": 44, "brams": 5, "cells": 185}}
    calls = []
    monkeypatch.setattr(rtl, "synth_report", lambda path, top: calls.append((path, top)) or fake)
    assert main(["rtl", "--config", "tiny", "-o", str(tmp_path), "--no-lint", "--synth"]) == 0
    assert calls == [(tmp_path / "braze_tiny.v", "braze_tiny")]
    report = json.loads((tmp_path / "braze_tiny_synth.json").read_text())
    assert report["top"] == "braze_tiny" and report["ice40"] == fake["ice40"]
    out = capsys.readouterr().out
    for label, value in (("generic cells", 1234), ("iCE40 LUT4", 111), ("iCE40 DFF", 44), ("SB_MAC16", 3)):
        assert re.search(rf"{re.escape(label)}\s+{value}\b", out), label


@pytest.mark.parametrize("argv, message", [
    (["--config", "huge"], "no preset named 'huge'"),
    (["--config", "tiny:rows=3"], "rows=3"),
])
def test_cli_bad_config(argv, message, tmp_path, capsys):
    assert main(["rtl", *argv, "-o", str(tmp_path), "--no-lint"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("braze rtl: error:") and message in err


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(BrazeError, match="output"):
        build(Config.preset("tiny"), blocker / "sub", lint=False)
    assert main(["rtl", "--config", "tiny", "-o", str(blocker), "--no-lint"]) == 2
    assert "braze rtl: error:" in capsys.readouterr().err
