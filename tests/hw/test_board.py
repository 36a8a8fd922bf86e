"""``braze fpga --board``: the board top's files and its errors; the serial-port transport."""

import json
import sys
import types

import pytest

from braze.cli import main
from braze.hw.board import BOARDS, board_config
from braze.isa import BrazeError, Config
from braze.sim.uart_device import BridgeError, SerialTransport


@pytest.mark.slow
def test_board_top_for_the_ulx3s(tmp_path):
    out = tmp_path / "ulx3s"
    assert main(["fpga", "--config", "tiny", "--target", "ecp5-85k", "--board", "ulx3s", "-o", str(out)]) == 0
    report = json.loads((out / "board_report.json").read_text())
    assert report["divisor"] == 217                             # 25 MHz / 115200 baud
    assert report["memory"]["memory_bytes"] == 65536 and report["config"]["dram_bytes"] == 65536
    assert report["memory"]["block_rams"] <= BOARDS["ulx3s"].block_rams
    constraints = (out / "top.lpf").read_text()
    assert 'LOCATE COMP "uart_0__rx__io" SITE "M1"' in constraints
    assert 'LOCATE COMP "uart_0__tx__io" SITE "L4"' in constraints
    verilog = (out / "top.v").read_text()
    assert "module top(" in verilog
    for block in ("accelerator", "memory", "bridge", "uart_rx", "uart_tx"):
        assert f"module \\top.board.{block}\n" in verilog or f"module \\top.board.{block} " in verilog, block


@pytest.mark.parametrize("argv, message", [
    (["--target", "ice40-up5k", "--board", "ulx3s"], "carries a ecp5-85k"),
    (["--target", "ecp5-85k", "--board", "icebreaker"], "no board named 'icebreaker'"),
    (["--target", "ecp5-85k", "--board", "ulx3s", "--memory-kib", "96"], "power of two"),
])
def test_board_option_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main(["fpga", "--config", "tiny", "-o", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_board_config_sets_the_memory_size():
    assert board_config(Config.preset("default")).dram_bytes == 1 << 16
    with pytest.raises(BrazeError, match="memory_bytes"):
        board_config(Config.preset("tiny"), 3 << 16)


class _FakePort:
    """A loopback stand-in for serial.Serial: what is written is read back."""

    def __init__(self, port, **settings):
        self.port, self.settings, self.timeout = port, settings, settings["timeout"]
        self.buffer = bytearray(b"left over by the last session")
        self.closed = False

    def write(self, data):
        self.buffer += data

    def read(self, count):
        data, self.buffer = bytes(self.buffer[:count]), self.buffer[count:]
        return data

    def reset_input_buffer(self):
        self.buffer.clear()

    def close(self):
        self.closed = True


def test_serial_transport_over_pyserial(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", types.SimpleNamespace(Serial=_FakePort))
    transport = SerialTransport("/dev/ttyUSB7", baud=115_200, timeout=0.5)
    assert transport._port.settings == {"baudrate": 115_200, "bytesize": 8, "parity": "N", "stopbits": 1,
                                        "timeout": 0.5}
    transport.send(b"\x01\x02\x03")
    assert transport.receive(2) == b"\x01\x02"
    with pytest.raises(BridgeError, match="/dev/ttyUSB7: 1 of 4 reply bytes"):
        transport.receive(4)
    transport.close()
    assert transport._port.closed


def test_serial_transport_without_pyserial_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)      # import serial raises ImportError
    with pytest.raises(BrazeError, match="pyserial"):
        SerialTransport("/dev/ttyUSB0")
