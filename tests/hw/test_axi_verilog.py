"""The AXI blocks and the CSR file convert to Verilog, with conventional AXI port names."""

import re

import pytest
from amaranth.back import verilog

from braze.hw.axi import AXI4LiteSlave, AXI4ReadMaster, AXI4WriteMaster, ReadArbiter, conventional_ports
from braze.hw.csr import CSRFile
from braze.isa import Config

AXI4_READ = ["arid", "araddr", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot", "arqos",
             "arvalid", "arready", "rid", "rdata", "rresp", "rlast", "rvalid", "rready"]
AXI4_WRITE = ["awid", "awaddr", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot", "awqos",
              "awvalid", "awready", "wdata", "wstrb", "wlast", "wvalid", "wready",
              "bid", "bresp", "bvalid", "bready"]
AXI4_LITE = ["awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
             "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready",
             "rdata", "rresp", "rvalid", "rready"]


def port_directions(text: str) -> dict[str, str]:
    """Ports of the top module (the converter also emits every submodule)."""
    top = re.search(r"^module top\(.*?^endmodule", text, re.M | re.S).group(0)
    return {name: direction for direction, name in
            re.findall(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[[^\]]+\]\s*)?(\w+)\s*;", top, re.M)}


@pytest.mark.parametrize("component, prefix, members, outputs", [
    (lambda: AXI4ReadMaster(data_width=128, max_outstanding=4), "m_axi", AXI4_READ + AXI4_WRITE,
     {"arvalid", "araddr", "rready", "awvalid", "wvalid", "bready"}),
    (lambda: AXI4WriteMaster(data_width=64, max_outstanding=4), "m_axi", AXI4_READ + AXI4_WRITE,
     {"awvalid", "awaddr", "wdata", "wlast", "bready", "arvalid"}),
    (lambda: AXI4LiteSlave(addr_width=12), "s_axil", AXI4_LITE, {"awready", "wready", "bvalid", "rdata"}),
    (lambda: CSRFile(Config.preset("default")), "s_axil", AXI4_LITE, {"arready", "rvalid", "bresp"}),
])
def test_converts_with_conventional_names(component, prefix, members, outputs):
    dut = component()
    text = verilog.convert(dut, name="top", ports=conventional_ports(dut))
    ports = port_directions(text)
    for member in members:
        assert f"{prefix}_{member}" in ports, f"{prefix}_{member} missing"
    for member in outputs:
        assert ports[f"{prefix}_{member}"] == "output"
    assert not any("__" in name for name in ports)


def test_read_arbiter_converts():
    dut = ReadArbiter(n_clients=3, data_width=64)
    ports = port_directions(verilog.convert(dut, name="top", ports=conventional_ports(dut)))
    assert {"req_0_valid", "req_2_ready", "data_1_valid", "m_req_valid", "m_data_ready"} <= set(ports)


def test_default_names_are_double_underscored():
    """What Amaranth does without the helper -- the reason conventional_ports exists."""
    ports = port_directions(verilog.convert(AXI4LiteSlave(addr_width=12), name="top"))
    assert "s_axil__awaddr" in ports and "s_axil_awaddr" not in ports
