"""The FPGA flow (synthesis, packing, place and route, bitstream) on both targets, with the real tools.

The accelerator's presets take minutes to synthesize (``braze bench fpga`` measures them), so
these tests run the flow on a small design made here -- a counter, N 8x8 multipliers and a
512x8 RAM -- which goes through every tool in seconds.  Its known contents (N multipliers, one
RAM) are what the reports must show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from braze.cli import main
from braze.hw.fpga import (
    TARGETS,
    FitError,
    check_fit,
    implement,
    io_wrapper,
    parse_nextpnr_report,
    result_table,
)
from braze.hw.fpga_bench import summary_line
from braze.hw.rtl import verilog_ports
from braze.isa import BrazeError

# One worker runs the whole module: the module's `flow` fixture (synthesis and P&R of the probe for both
# targets, ~20 s) runs once, not once per worker.
pytestmark = pytest.mark.xdist_group("fpga-flow")


class ProbeCore(wiring.Component):
    """``multipliers`` registered 8x8 products and a 512x8 RAM written by a counter."""

    def __init__(self, multipliers: int):
        self.multipliers = multipliers
        super().__init__({"a": In(8), "b": In(8), "addr": In(9), "y": Out(16 * multipliers), "q": Out(8)})

    def elaborate(self, platform):
        m = Module()
        count = Signal(16)
        m.d.sync += count.eq(count + 1)
        for i in range(self.multipliers):
            m.d.sync += self.y[16 * i:16 * i + 16].eq((self.a + i) * (self.b ^ count[:8]))
        m.submodules.ram = ram = Memory(shape=8, depth=512, init=[])
        write, read = ram.write_port(), ram.read_port()
        m.d.comb += [write.addr.eq(count[:9]), write.data.eq(self.a), write.en.eq(1),
                     read.addr.eq(self.addr), self.q.eq(read.data)]
        return m


def write_probe(directory, multipliers: int):
    """The probe's Verilog and a manifest as :func:`braze.hw.rtl.build` writes (top, config, ports)."""
    directory.mkdir(parents=True, exist_ok=True)
    top = f"probe_{multipliers}"
    text = verilog.convert(ProbeCore(multipliers), name=top, emit_src=False)
    (directory / f"{top}.v").write_text(text)
    manifest = {"top": top, "config": {"name": top}, "ports": verilog_ports(text, top)}
    (directory / f"{top}.json").write_text(json.dumps(manifest))
    return directory / f"{top}.v", directory / f"{top}.json"


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Both targets' results for a 4-multiplier probe, run twice (the second from the cache)."""
    root = tmp_path_factory.mktemp("fpga")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRAZE_CACHE_DIR", str(root / "cache"))   # a cold cache: the tools really run
        verilog_path, manifest = write_probe(root / "probe", 4)
        first = {name: implement(verilog_path, manifest, name, root / "out", progress=None)
                 for name in ("ice40-up5k", "ecp5-85k")}
        again = {name: implement(verilog_path, manifest, name, root / "again", progress=None)
                 for name in ("ice40-up5k", "ecp5-85k")}
    return first, again


@pytest.mark.slow
@pytest.mark.parametrize("name, dsp_bel, ram_bel", [("ice40-up5k", "ICESTORM_DSP", "ICESTORM_RAM"),
                                                   ("ecp5-85k", "MULT18X18D", "DP16KD")])
def test_probe_places_routes_and_packs(flow, name, dsp_bel, ram_bel):
    first, _ = flow
    result = first[name]
    report = result.report
    print(result_table(report))
    assert report["fits"] is True
    by_bel = {row["bel"]: row for row in report["resources"]}
    # Multipliers went to DSP blocks (synth_ice40 -dsp; synth_ecp5's default), the RAM to block RAM.
    assert by_bel[dsp_bel]["used"] == 4
    assert by_bel[ram_bel]["used"] == 1
    assert report["memory_owners"] == {"ram": 1}
    assert sum(report["dsp_owners"].values()) == 4
    # The IO wrapper leaves four pins: clk, rst, the serial input and the folded output.
    assert next(row for row in report["resources"] if row["resource"] == "IO")["used"] == 4
    assert report["io_wrapper"] == {"input_bits": 8 + 8 + 9, "output_bits": 64 + 8, "ffs": 25}

    # The report's numbers are nextpnr's own, from the report file it wrote.
    nextpnr = parse_nextpnr_report(json.loads(result.files["report.json"].read_text()))
    assert report["fmax_mhz"] == pytest.approx(nextpnr["fmax"]["achieved"], abs=0.01)
    assert report["fmax_mhz"] > 0 and report["timing_met"] == (report["fmax_mhz"] >= report["target_mhz"])
    for row in report["resources"]:
        assert nextpnr["utilization"][row["bel"]] == {"used": row["used"], "available": row["available"]}

    # A real bitstream: the iCE40 sync word 7EAA997E, the ECP5 preamble FFFFBDB3.
    bitstream = Path(report["bitstream"]).read_bytes()
    assert bytes.fromhex("7eaa997e" if name.startswith("ice40") else "ffffbdb3") in bitstream[:64]
    assert json.loads(result.files["report"].read_text()) == report


@pytest.mark.slow
def test_second_run_comes_from_the_cache(flow):
    first, again = flow
    for name in first:
        assert first[name].report["cached"] == {"synth": False, "pnr": False}
        assert again[name].report["cached"] == {"synth": True, "pnr": True}
        for key in ("resources", "fmax_mhz", "seconds", "memory_owners"):
            assert again[name].report[key] == first[name].report[key]
        assert again[name].files["report"].parent.name == "again"


@pytest.mark.slow
def test_design_over_a_resource_does_not_fit(tmp_path, monkeypatch):
    """Ten multipliers on the UP5K's eight DSPs: packing says by how much; no P&R is attempted."""
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "cache"))
    verilog_path, manifest = write_probe(tmp_path / "probe", 10)
    result = implement(verilog_path, manifest, "ice40-up5k", tmp_path / "out", progress=None)
    report = result.report
    assert report["fits"] is False and report["fmax_mhz"] is None and report["bitstream"] is None
    assert "report.json" not in result.files and "packed.json" in result.files
    with pytest.raises(FitError) as error:
        check_fit(TARGETS["ice40-up5k"], report["top"], report["resources"])
    message = str(error.value)
    assert message == ("probe_10 does not fit the ice40-up5k (iCE40UP5K SG48): needs DSP (SB_MAC16) "
                       "10 of 8 (2 more, 25% over)")
    assert "\n" not in message


def test_a_failed_synthesis_says_what_yosys_logged(tmp_path, monkeypatch):
    """Yosys run with -q prints nothing of an internal error (the epilogue probe's ABC9 assertion): the
    error carries its log's end, as the failed cache entry is removed.  Yosys is faked here."""
    import braze.hw.fpga as fpga
    from braze.hw.toolchain import ToolError

    def failing_yosys(tool, args, cwd, **_):
        (cwd / "yosys.log").write_text("3.46.15.7. Executing ABC_OPS_REINTEGRATE pass\n"
                                       "ERROR: Assert `GetSize(conn.first) == GetSize(conn.second)'\n")
        raise ToolError(f"{tool} failed (exit 1) in {cwd}:\n")

    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fpga, "run_yowasp", failing_yosys)
    verilog_path, manifest = write_probe(tmp_path / "probe", 1)
    with pytest.raises(ToolError, match=r"(?s)failed \(exit 1\).*yosys.log:.*ERROR: Assert `GetSize"):
        fpga.synthesize(verilog_path, manifest, "ecp5-85k", progress=None)
    assert not [path for path in (tmp_path / "cache" / "fpga").iterdir() if path.is_dir()]


@pytest.mark.slow
def test_a_place_and_route_budget_stops_nextpnr_and_keeps_the_fit(tmp_path, monkeypatch):
    """With ``pnr_minutes`` used up nextpnr is stopped: the report has packing's fit and resources, no Fmax
    and no bitstream, says it stopped, and nothing is cached (a run that finishes may follow)."""
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "cache"))
    verilog_path, manifest = write_probe(tmp_path / "probe", 2)
    for attempt in ("first", "again"):
        result = implement(verilog_path, manifest, "ice40-up5k", tmp_path / attempt, pnr_minutes=0.001,
                           progress=None)
        report = result.report
        assert report["fits"] is True and report["fmax_mhz"] is None and report["bitstream"] is None
        assert report["stopped"]["minutes"] == 0.001
        assert {row["bel"]: row["used"] for row in report["resources"]}["ICESTORM_DSP"] == 2
        assert report["cached"]["pnr"] is False
        assert "place and route stopped after its 0.001 minutes" in result_table(report)
        assert result.files["nextpnr.log"].exists()


def test_fit_check_names_every_resource_over():
    rows = [{"resource": "LUT4", "bel": "TRELLIS_COMB", "used": 100_000, "available": 83_640},
            {"resource": "FF", "bel": "TRELLIS_FF", "used": 10, "available": 83_640},
            {"resource": "BRAM (DP16KD)", "bel": "DP16KD", "used": 260, "available": 208}]
    with pytest.raises(FitError, match=r"needs LUT4 100000 of 83640 \(16360 more, 20% over\); "
                                       r"BRAM \(DP16KD\) 260 of 208 \(52 more, 25% over\)$"):
        check_fit(TARGETS["ecp5-85k"], "braze_big", rows)
    check_fit(TARGETS["ecp5-85k"], "braze_big", rows[1:2])   # fits: no error


def test_io_wrapper_connects_every_port_bit():
    ports = [{"name": name, "direction": direction, "width": width} for name, direction, width in (
        ("clk", "input", 1), ("rst", "input", 1), ("a", "input", 3), ("b", "input", 1),
        ("x", "output", 2), ("y", "output", 5))]
    name, text, cost = io_wrapper("core_top", ports)
    assert name == "core_top_fpga" and cost == {"input_bits": 4, "output_bits": 7, "ffs": 4}
    assert ".a(chain[2:0])" in text and ".b(chain[3:3])" in text
    assert ".x(outputs[1:0])" in text and ".y(outputs[6:2])" in text
    assert "chain <= {chain[2:0], serial_in}" in text
    with pytest.raises(BrazeError, match="core_top needs at least one input and one output"):
        io_wrapper("core_top", ports[:4])


def test_bench_summary_line():
    def report(config, target, fits, fmax):
        return {"config": config, "target": target, "fits": fits, "fmax_mhz": fmax}

    fits_both = [report("default", "ecp5-85k", True, 103.27), report("tiny", "ice40-up5k", False, None)]
    assert summary_line(fits_both) == ("fpga: default_ecp5_fmax_mhz=103.3 default_ecp5_fits=1 "
                                       "tiny_ice40_fits=0")
    fits_tiny = [report("default", "ecp5-85k", False, None), report("tiny", "ice40-up5k", True, 30.0)]
    assert summary_line(fits_tiny) == "fpga: default_ecp5_fmax_mhz=- default_ecp5_fits=0 tiny_ice40_fits=1"
    # Pairs not run are not reported as misfits.
    assert summary_line([]) == "fpga: default_ecp5_fmax_mhz=- default_ecp5_fits=- tiny_ice40_fits=-"


@pytest.mark.parametrize("argv, message", [
    (["--target", "virtex"], "no FPGA target named 'virtex'; targets are ecp5-85k, ice40-up5k"),
    (["--target", "ecp5-85k", "--freq", "0"], "argument --freq: 0 is out of range"),
    (["--target", "ecp5-85k", "--block", "alu"], "no block named 'alu' to probe; blocks are control, matmul"),
])
def test_cli_bad_input_is_one_line(argv, message, tmp_path, capsys):
    assert main(["fpga", "--config", "tiny", "-o", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "out").exists()   # nothing generated before the arguments were checked


def test_bench_rejects_an_unknown_target_before_running_anything(capsys):
    assert main(["bench", "fpga", "--presets", "tiny", "--targets", "ecp5-85k,spartan"]) == 2
    err = capsys.readouterr().err
    assert "no FPGA target named 'spartan'" in err and len(err.strip().splitlines()) == 1
