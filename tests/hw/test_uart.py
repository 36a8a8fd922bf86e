# amaranth: UnusedElaboratable=no
"""The UART alone: bytes in and out at the bit level, framing errors, overruns, glitches."""

import pytest
from amaranth.sim import Simulator

from braze.hw.uart import BoardParameterError, UARTReceiver, UARTTransmitter
from braze.isa import BrazeError


def _frame(byte: int, stop: int = 1) -> list[int]:
    return [0, *((byte >> i) & 1 for i in range(8)), stop]


def _receive(divisor: int, line_bits: list[int], *, ready: bool = True, take_after: int | None = None):
    """Drive ``line_bits`` (one per bit time) into a receiver; return bytes taken and error pulses."""
    dut = UARTReceiver(divisor)
    got, errors = [], {"error": 0, "frame_error": 0, "overrun": 0}
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    total = (len(line_bits) + 4) * divisor

    async def drive(ctx):
        for bit in line_bits:
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(divisor)
        ctx.set(dut.rx, 1)

    async def watch(ctx):
        for cycle in range(total):
            take = ready or (take_after is not None and cycle >= take_after)
            ctx.set(dut.data.ready, take)
            await ctx.delay(1e-9)           # let the combinational outputs settle for this cycle
            if take and ctx.get(dut.data.valid):
                got.append(ctx.get(dut.data.payload))
            for name in errors:
                errors[name] += ctx.get(getattr(dut, name))
            await ctx.tick()

    sim.add_testbench(drive)
    sim.add_testbench(watch)
    sim.run()
    return got, errors


@pytest.mark.parametrize("divisor", [2, 4, 7])
def test_receiver_takes_bytes_and_drops_a_framing_error(divisor):
    sent = [0x55, 0x00, 0xFF, 0xA3]
    bits = [1, 1] + sum((_frame(b) for b in sent), []) + _frame(0x3C, stop=0) + [1] + _frame(0x5A)
    got, errors = _receive(divisor, bits)
    assert got == sent + [0x5A]
    assert errors == {"error": 1, "frame_error": 1, "overrun": 0}


def test_receiver_reports_an_overrun_and_keeps_the_first_byte():
    bits = [1] + _frame(0x11) + _frame(0x22) + [1] * 3
    got, errors = _receive(4, bits, ready=False, take_after=len(bits) * 4)
    assert got == [0x11]
    assert errors == {"error": 1, "frame_error": 0, "overrun": 1}


def test_receiver_ignores_a_glitch_shorter_than_half_a_bit():
    # One low cycle on an idle line is no start bit: nothing is received and nothing is an error.
    dut = UARTReceiver(8)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    seen = []

    async def bench(ctx):
        ctx.set(dut.data.ready, 1)
        await ctx.tick().repeat(3)
        ctx.set(dut.rx, 0)
        await ctx.tick()
        ctx.set(dut.rx, 1)
        for _ in range(120):
            await ctx.tick()
            seen.append((ctx.get(dut.data.valid), ctx.get(dut.error)))

    sim.add_testbench(bench)
    sim.run()
    assert not any(valid or error for valid, error in seen)


@pytest.mark.parametrize("divisor", [2, 5])
def test_transmitter_frames_each_byte(divisor):
    dut = UARTTransmitter(divisor)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sent = [0x00, 0xFF, 0x96, 0x41]
    line = []

    async def feed(ctx):
        for byte in sent:
            ctx.set(dut.data.payload, byte)
            ctx.set(dut.data.valid, 1)
            await ctx.tick().until(dut.data.ready)
        ctx.set(dut.data.valid, 0)

    async def sample(ctx):
        for _ in range(len(sent) * 11 * divisor + 20):
            await ctx.tick()
            line.append(ctx.get(dut.tx))

    sim.add_testbench(feed)
    sim.add_testbench(sample)
    sim.run()
    # Decode the sampled line as a receiver would: a falling edge, then the middle of each bit.
    assert line[0] == 1
    got, index = [], 0
    while index < len(line) and len(got) < len(sent):
        if line[index] == 0:
            middle = [line[index + divisor // 2 + k * divisor] for k in range(10)]
            assert middle[0] == 0 and middle[9] == 1, f"byte {len(got)}: bad start or stop bit"
            got.append(sum(bit << i for i, bit in enumerate(middle[1:9])))
            index += 10 * divisor - divisor // 2
        else:
            index += 1
    assert got == sent
    assert line[-1] == 1   # idles high afterwards


@pytest.mark.parametrize("divisor", [1, 0, "4", True, 1 << 17])
def test_bad_divisor_is_a_clear_error(divisor):
    for block in (UARTReceiver, UARTTransmitter):
        with pytest.raises(BoardParameterError, match="divisor") as caught:
            block(divisor)
        assert isinstance(caught.value, BrazeError)
