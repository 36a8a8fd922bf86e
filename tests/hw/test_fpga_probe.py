"""Block probes for the FPGA flow: the control core with its fetch unit as one design, and the
critical path read back from nextpnr's log.  (The place and route itself is the flow's, tested in
test_fpga_flow.py; a block takes minutes, so it is measured by hand: ``braze fpga --block``.)"""

from amaranth.back import verilog

from braze.hw.control import Control
from braze.hw.fetch import Fetch
from braze.hw.fpga_probe import BLOCKS, ControlProbe, block_component, critical_path, path_table
from braze.hw.rtl import verilog_ports
from braze.isa import PRESETS

# An earlier report (placement), the routed one (real lines, shortened cell names), a cross-domain one.
LOG = """\
Info: Critical path report for clock '$glbnet$clk$TRELLIS_IO_IN' (posedge -> posedge):
Info:      logic  7.77  7.77 Source an.earlier.report
Info: Critical path report for clock '$glbnet$clk$TRELLIS_IO_IN' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source core.fetch.words.consume_TRELLIS_FF_Q_1.Q
Info:    routing  1.54  2.06 Net core.fetch.words.consume[1] (12,40) -> (14,41)
Info:                          Sink core.fetch.words.storage.0.27$DPRAM_COMB1.B
Info:      logic  0.24  2.30 Source core.fetch.words.storage.0.27$DPRAM_COMB1.F
Info:      logic  0.07  2.37 Source core.control.core.decoder.x$CCU2_COMB0.FCO
Info:      logic  3.93  6.30 Source core.control.core.decoder.$3_MULT18X18D_P9.P0
Info:      setup  0.00  6.30 Source core.control.core.slot_cause_TRELLIS_FF_Q.DI
Info: 6.3 ns logic, 1.5 ns routing
Info: Critical path report for cross-domain path '<async>' -> 'posedge $glbnet$clk$TRELLIS_IO_IN':
Info:      logic  9.99  9.99 Source not.this.one
"""


def test_critical_path_reads_the_last_clock_report():
    steps = critical_path(LOG)
    assert [(s["kind"], s["total"]) for s in steps] == [
        ("clk-to-q", 0.52), ("logic", 2.30), ("logic", 6.30), ("setup", 6.30)]   # the 0.07 hop is left out
    assert steps[2]["cell"] == "core.control.core.decoder.$3_MULT18X18D_P9.P0"
    assert "MULT18X18D" in path_table(steps).splitlines()[2]
    assert critical_path("Info: no timing here\n") == []


def test_control_probe_exposes_every_port_but_the_fetch_stream():
    config = PRESETS["tiny"]
    top = "probe_control"
    ports = {p["name"] for p in verilog_ports(verilog.convert(ControlProbe(config), name=top), top)}
    control_only = {name for name in Control(config).signature.members if name not in ("fetch", "redirect",
                                                                                         "redirect_pc")}
    # Every control port outside the fetch connection is a top-level port (flattened with its prefix).
    for name in control_only:
        assert any(port == name or port.startswith(f"{name}__") for port in ports), name
    assert any(port.startswith("fetch_req__") for port in ports)
    assert any(port.startswith("fetch_data__") for port in ports)
    # The fetch stream and the branch redirect are internal: no top-level port carries them.
    assert not any(port.startswith(("fetch__", "redirect")) for port in ports)
    assert "fetch" in Fetch(config).signature.members
    # The compute client's error is tied off, as in the accelerator; the load client's is a port.
    assert any(port.startswith("compute__done") for port in ports)
    assert not any(port.startswith(("compute__error", "compute__cause")) for port in ports)
    assert any(port.startswith("load__error") for port in ports)


def test_every_block_has_a_component():
    config = PRESETS["tiny"]
    for name in BLOCKS:
        component = block_component(name, config)
        assert component.signature.members, name
