# amaranth: UnusedElaboratable=no
"""The UART bridge's commands, over a bit-level UART: registers, memory, every error status.

The bridge runs in :class:`~braze.hw.board.BridgeTop` -- the UART, the bridge, a board memory and the
accelerator's register file, without the rest of the accelerator -- so that thousands of bit times
simulate in well under a second; the whole board top is exercised by ``tests/sim/test_uart_device.py``.
"""

import pytest

from braze.hw.board import BridgeTop
from braze.hw.board_memory import BoardMemory, block_ram_blocks
from braze.hw.csr import MAGIC, REGISTER_BY_NAME
from braze.hw.uart import BoardParameterError
from braze.hw.uart_bridge import HEADER_BYTES, PROTOCOL_VERSION, Op, SerialBridge, Status, header_status
from braze.isa import Config
from braze.sim.uart_device import BridgeClient, BridgeError, SimulatedBoard

MEM_BYTES = 1 << 16
WORD = 8
CONFIG = Config.preset("tiny").replace(dram_bytes=MEM_BYTES)
DIVISOR = 4
CYCLE_LIMIT = REGISTER_BY_NAME["CYCLE_LIMIT"].offset
ID = REGISTER_BY_NAME["ID"].offset


@pytest.fixture
def board():
    return SimulatedBoard(CONFIG, divisor=DIVISOR, top=BridgeTop(CONFIG, divisor=DIVISOR),
                          reply_timeout=5_000)


def request(board, op, header: bytes = b"", payload: bytes = b"", reply: int = 0) -> tuple[bytes, Status]:
    """Send one raw request; return the reply's payload and its status."""
    board.send(bytes([op.value if isinstance(op, Op) else op]) + header + payload)
    data = board.receive(reply + 1)
    return data[:-1], Status(data[-1])


def reg_header(addr: int, data_or_count: int, size: int) -> bytes:
    return addr.to_bytes(2, "little") + data_or_count.to_bytes(size, "little")


def mem_header(addr: int, count: int) -> bytes:
    return addr.to_bytes(4, "little") + count.to_bytes(2, "little")


def test_info_and_register_write_read(board):
    payload, status = request(board, Op.INFO, reply=6)
    assert status is Status.OK
    assert int.from_bytes(payload[:4], "little") == MEM_BYTES and payload[4] == WORD
    assert payload[5] == PROTOCOL_VERSION
    assert request(board, Op.REG_WRITE, reg_header(CYCLE_LIMIT, 0xDEADBEEF, 4)) == (b"", Status.OK)
    # Three consecutive registers in one request: ID, VERSION, GEOMETRY.
    payload, status = request(board, Op.REG_READ, reg_header(ID, 3, 1), reply=12)
    assert status is Status.OK and int.from_bytes(payload[:4], "little") == MAGIC
    payload, status = request(board, Op.REG_READ, reg_header(CYCLE_LIMIT, 1, 1), reply=4)
    assert (int.from_bytes(payload, "little"), status) == (0xDEADBEEF, Status.OK)


def test_memory_write_then_read_around_it(board):
    words = bytes(range(1, 3 * WORD + 1))
    assert request(board, Op.MEM_WRITE, mem_header(0x40, 3), words) == (b"", Status.OK)
    payload, status = request(board, Op.MEM_READ, mem_header(0x38, 5), reply=5 * WORD)
    assert status is Status.OK
    assert payload == bytes(WORD) + words + bytes(WORD)
    # The last word of memory is addressable.
    assert request(board, Op.MEM_WRITE, mem_header(MEM_BYTES - WORD, 1), b"\xAB" * WORD)[1] is Status.OK
    assert request(board, Op.MEM_READ, mem_header(MEM_BYTES - WORD, 1), reply=WORD) == \
        (b"\xAB" * WORD, Status.OK)


def test_every_error_status_and_the_bridge_stays_in_step(board):
    # An unknown opcode is answered at once, with nothing else.
    assert request(board, 0x7F) == (b"", Status.BAD_OPCODE)
    assert request(board, 0x00) == (b"", Status.BAD_OPCODE)
    # Bad lengths.
    assert request(board, Op.REG_READ, reg_header(ID, 0, 1)) == (b"", Status.BAD_LENGTH)
    assert request(board, Op.MEM_READ, mem_header(0, 0)) == (b"", Status.BAD_LENGTH)
    assert request(board, Op.MEM_WRITE, mem_header(0, 0)) == (b"", Status.BAD_LENGTH)
    # Bad addresses: misaligned, past the register window, past the memory.
    assert request(board, Op.REG_WRITE, reg_header(CYCLE_LIMIT + 2, 1, 4)) == (b"", Status.BAD_ADDRESS)
    assert request(board, Op.REG_READ, reg_header(0xFFC, 2, 1)) == (b"", Status.BAD_ADDRESS)
    assert request(board, Op.REG_WRITE, reg_header(0x1000, 1, 4)) == (b"", Status.BAD_ADDRESS)
    assert request(board, Op.MEM_READ, mem_header(4, 1)) == (b"", Status.BAD_ADDRESS)
    assert request(board, Op.MEM_READ, mem_header(MEM_BYTES - WORD, 2)) == (b"", Status.BAD_ADDRESS)
    # A MEM_WRITE past the end: its payload is read and dropped, and nothing is written.
    assert request(board, Op.MEM_WRITE, mem_header(MEM_BYTES - WORD, 2), b"\xEE" * 2 * WORD) == \
        (b"", Status.BAD_ADDRESS)
    assert request(board, Op.MEM_READ, mem_header(MEM_BYTES - WORD, 1), reply=WORD) == \
        (bytes(WORD), Status.OK)
    # AXI-Lite errors: a write to a read-only register, a read of an unmapped one (after its data).
    assert request(board, Op.REG_WRITE, reg_header(ID, 1, 4)) == (b"", Status.BUS_ERROR)
    payload, status = request(board, Op.REG_READ, reg_header(ID, 4, 1), reply=16)   # 0x00C is unmapped
    assert status is Status.BUS_ERROR and int.from_bytes(payload[:4], "little") == MAGIC
    # After all of it, requests work.
    assert request(board, Op.INFO, reply=6)[1] is Status.OK


def test_a_framing_error_aborts_the_request(board):
    board.send(bytes([Op.MEM_WRITE.value]) + mem_header(0x80, 1) + b"\x11\x22\x33")
    board.send_framing_error(0x44)
    assert board.receive(1) == bytes([Status.RX_ERROR.value])
    assert request(board, Op.MEM_READ, mem_header(0x80, 1), reply=WORD) == (bytes(WORD), Status.OK)


def test_a_request_that_stops_part_way_times_out():
    # A bridge that gives up after 3 byte times of silence within a request.
    board = SimulatedBoard(CONFIG, divisor=DIVISOR, top=BridgeTop(CONFIG, divisor=DIVISOR, timeout_bytes=3),
                           reply_timeout=5_000)
    # Back-to-back bytes never time out, however long the request...
    words = bytes(range(4 * WORD))
    assert request(board, Op.MEM_WRITE, mem_header(0x100, 4), words) == (b"", Status.OK)
    # ... and an idle bridge waits for ever; a request cut short ends with TIMEOUT and writes nothing.
    board.send(bytes([Op.MEM_WRITE.value]) + mem_header(0x100, 1) + b"\xFF\xFF")
    start = board.cycles
    assert board.receive(1) == bytes([Status.TIMEOUT.value])
    # The 9 bytes sent, 3 byte times of silence, the status byte (and a few cycles of latency).
    byte_time = 10 * DIVISOR
    assert (9 + 3 + 1) * byte_time <= board.cycles - start <= (9 + 4 + 1) * byte_time
    assert request(board, Op.MEM_READ, mem_header(0x100, 4), reply=4 * WORD) == (words, Status.OK)


def test_client_splits_unaligned_spans_and_names_failed_requests(board):
    client = BridgeClient(board)
    assert (client.memory_bytes, client.word_bytes) == (MEM_BYTES, WORD)
    client.write_memory(0x10, bytes(range(2 * WORD)))
    client.write_memory(0x13, b"\xF0\xF1\xF2\xF3\xF4\xF5\xF6\xF7\xF8\xF9")     # straddles three words
    expected = bytearray(range(2 * WORD)) + bytes(WORD)
    expected[3:13] = b"\xF0\xF1\xF2\xF3\xF4\xF5\xF6\xF7\xF8\xF9"
    assert client.read_memory(0x10, 3 * WORD) == bytes(expected)
    assert client.read_memory(0x15, 3) == bytes(expected[5:8])
    with pytest.raises(BridgeError, match="REG_WRITE.*BUS_ERROR"):
        client.write_register(ID, 0)
    with pytest.raises(BridgeError, match="MEM_READ.*BAD_ADDRESS"):
        client.read_memory(MEM_BYTES - 4, 8)


def test_the_hosts_header_check_agrees_with_the_hardware(board):
    """header_status, which the host uses to know a reply's length, is the rule the bridge applies."""
    cases = [(Op.REG_WRITE, CYCLE_LIMIT, 7), (Op.REG_WRITE, CYCLE_LIMIT + 1, 7), (Op.REG_WRITE, 0x1000, 7),
             (Op.REG_READ, ID, 0), (Op.REG_READ, 0xFF8, 2), (Op.REG_READ, 0xFF8, 3), (Op.REG_READ, 0x802, 1),
             (Op.MEM_READ, 0, 0), (Op.MEM_READ, WORD, 1), (Op.MEM_READ, WORD + 4, 1),
             (Op.MEM_READ, MEM_BYTES - WORD, 1), (Op.MEM_READ, MEM_BYTES - WORD, 2),
             (Op.MEM_READ, MEM_BYTES, 1),
             (Op.MEM_WRITE, MEM_BYTES - 2 * WORD, 2), (Op.MEM_WRITE, MEM_BYTES - 2 * WORD, 3)]
    verdicts = []
    for op, addr, count in cases:
        verdict = header_status(op, addr, count, reg_addr_width=12, mem_size=MEM_BYTES, word_bytes=WORD)
        if op is Op.REG_WRITE:
            header = reg_header(addr, count, 4)
        elif op is Op.REG_READ:
            header = reg_header(addr, count, 1)
        else:
            header = mem_header(addr, count)
        accepted = verdict is Status.OK
        reply = {Op.REG_READ: 4 * count, Op.MEM_READ: WORD * count}.get(op, 0) if accepted else 0
        payload = bytes(WORD * count) if op is Op.MEM_WRITE else b""
        _, status = request(board, op, header, payload, reply=reply)
        # An accepted header executes; a register may still answer with a bus error.
        assert status is verdict or (accepted and status is Status.BUS_ERROR), (op, addr, count, status)
        verdicts.append(verdict)
    assert {Status.OK, Status.BAD_ADDRESS, Status.BAD_LENGTH} <= set(verdicts)


def test_header_lengths_cover_every_opcode():
    assert set(HEADER_BYTES) == set(Op)


@pytest.mark.parametrize("make, match", [
    (lambda: SerialBridge(mem_size=1000, word_bytes=8), "mem_size"),
    (lambda: SerialBridge(mem_size=1024, word_bytes=4), "word_bytes"),
    (lambda: SerialBridge(reg_addr_width=17, mem_size=1024, word_bytes=8), "reg_addr_width"),
    (lambda: SerialBridge(mem_size=1024, word_bytes=8, timeout_cycles=-1), "timeout_cycles"),
    (lambda: BridgeTop(CONFIG, divisor=4, timeout_bytes=-5), "timeout_bytes"),
    (lambda: BoardMemory(size=64, data_width=64), "size"),
    (lambda: BoardMemory(size=1024, data_width=32), "data_width"),
])
def test_bad_parameters_are_clear_errors(make, match):
    with pytest.raises(BoardParameterError, match=match):
        make()


def test_block_ram_estimate():
    # ECP5 DP16KD: 64 KiB is 32 blocks at any width (what synth_ecp5 gives for 64 and 128 bits; the
    # byte lanes leave the ninth bit of each unused); iCE40: 16 x 4 of 256 x 16.
    assert block_ram_blocks("ecp5", 8192, 64) == block_ram_blocks("ecp5", 4096, 128) == 32
    assert block_ram_blocks("ecp5", 512, 36) == 2
    assert block_ram_blocks("ice40", 1024, 16) == 4
    with pytest.raises(BoardParameterError, match="family"):
        block_ram_blocks("virtex", 1, 1)
