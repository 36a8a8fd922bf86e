# amaranth: UnusedElaboratable=no
"""The banked memory: compute ports never stall, DMA ports retry on bank conflicts, data survives."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import signed
from amaranth.lib import data
from amaranth.sim import Simulator

from braze.hw.memories import BankedMemory


def _simulate(dut, testbench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()


@pytest.mark.parametrize("element, depth, banks", [(8, 32, 4), (32, 16, 2), (32, 8, 1)],
                         ids=["spad_like", "acc_like", "one_bank"])
def test_random_traffic(element, depth, banks):
    """Every port busy at random; a Python model of the rows checks every read and the end state."""
    cols = 4
    shape = data.ArrayLayout(signed(element), cols)
    rng = np.random.default_rng(element * 100 + depth + banks)
    init = rng.integers(-(1 << (element - 1)), 1 << (element - 1), size=(depth, cols))
    dut = BankedMemory(shape=shape, depth=depth, banks=banks, init=[list(map(int, row)) for row in init])
    model = init.astype(np.int64)
    low, high = -(1 << (element - 1)), 1 << (element - 1)
    stats = {"dma_read_stalls": 0, "dma_write_stalls": 0, "dma_reads": 0, "dma_writes": 0}

    def random_row():
        return [int(x) for x in rng.integers(low, high, cols)]

    async def testbench(ctx):
        dma_read_request = None           # row address, held until accepted
        dma_write_request = None          # (row address, data, mask), held until accepted
        expect_compute = expect_dma = None
        for _ in range(400):
            # Requests of this cycle.  The DMA ones stay until `ready`.
            compute_read = int(rng.integers(depth)) if rng.random() < 0.7 else None
            compute_write = ((int(rng.integers(depth)), random_row(), int(rng.integers(1 << cols)))
                             if rng.random() < 0.6 else None)
            if dma_read_request is None and rng.random() < 0.7:
                dma_read_request = int(rng.integers(depth))
            if dma_write_request is None and rng.random() < 0.7:
                dma_write_request = (int(rng.integers(depth)), random_row(), int(rng.integers(1 << cols)))

            ctx.set(dut.compute_read.en, compute_read is not None)
            ctx.set(dut.compute_read.addr, compute_read or 0)
            ctx.set(dut.compute_write.en, compute_write is not None)
            if compute_write is not None:
                ctx.set(dut.compute_write.addr, compute_write[0])
                ctx.set(dut.compute_write.data, compute_write[1])
                ctx.set(dut.compute_write.mask, compute_write[2])
            ctx.set(dut.dma_read.en, dma_read_request is not None)
            ctx.set(dut.dma_read.addr, dma_read_request or 0)
            ctx.set(dut.dma_write.en, dma_write_request is not None)
            if dma_write_request is not None:
                ctx.set(dut.dma_write.addr, dma_write_request[0])
                ctx.set(dut.dma_write.data, dma_write_request[1])
                ctx.set(dut.dma_write.mask, dma_write_request[2])

            # Data of the reads accepted in the previous cycle.
            assert ctx.get(dut.compute_read.valid) == (expect_compute is not None)
            if expect_compute is not None:
                assert list(ctx.get(dut.compute_read.data)) == expect_compute
            assert ctx.get(dut.dma_read.valid) == (expect_dma is not None)
            if expect_dma is not None:
                assert list(ctx.get(dut.dma_read.data)) == expect_dma

            # Arbitration: the DMA loses exactly when the compute port uses the same bank.
            read_ok = compute_read is None or dma_read_request is None or \
                compute_read % banks != dma_read_request % banks
            write_ok = compute_write is None or dma_write_request is None or \
                compute_write[0] % banks != dma_write_request[0] % banks
            if dma_read_request is not None:
                assert ctx.get(dut.dma_read.ready) == read_ok
            if dma_write_request is not None:
                assert ctx.get(dut.dma_write.ready) == write_ok
            read_accepted = dma_read_request is not None and read_ok
            write_accepted = dma_write_request is not None and write_ok
            assert ctx.get(dut.reads) == (compute_read is not None) + read_accepted
            assert ctx.get(dut.writes) == (compute_write is not None) + write_accepted

            # Reads see the rows before this cycle's writes.
            expect_compute = [int(x) for x in model[compute_read]] if compute_read is not None else None
            expect_dma = [int(x) for x in model[dma_read_request]] if read_accepted else None
            for request, accepted in ((compute_write, compute_write is not None),
                                      (dma_write_request, write_accepted)):
                if accepted:
                    addr, row, mask = request
                    for col in range(cols):
                        if mask >> col & 1:
                            model[addr, col] = row[col]
            stats["dma_read_stalls"] += dma_read_request is not None and not read_ok
            stats["dma_write_stalls"] += dma_write_request is not None and not write_ok
            stats["dma_reads"] += read_accepted
            stats["dma_writes"] += write_accepted
            if read_accepted:
                dma_read_request = None
            if write_accepted:
                dma_write_request = None
            await ctx.tick()

        for addr in range(depth):
            assert list(ctx.get(dut.storage_row(addr))) == [int(x) for x in model[addr]], f"row {addr}"

    _simulate(dut, testbench)
    # The traffic really exercised both retries and progress.
    assert stats["dma_read_stalls"] > 10 and stats["dma_write_stalls"] > 10
    assert stats["dma_reads"] > 50 and stats["dma_writes"] > 50


def test_dma_waits_while_compute_holds_its_bank():
    """A DMA read of bank 0 is refused while the compute port reads bank 0, then served."""
    shape = data.ArrayLayout(signed(8), 4)
    dut = BankedMemory(shape=shape, depth=16, banks=4, init=[[row, -row, 2 * row, 0] for row in range(16)])

    async def testbench(ctx):
        ctx.set(dut.dma_read.en, 1)
        ctx.set(dut.dma_read.addr, 4)                    # bank 0
        ctx.set(dut.compute_read.en, 1)
        for cycle in range(5):
            ctx.set(dut.compute_read.addr, 8 + 4 * (cycle % 2))   # bank 0 as well
            assert not ctx.get(dut.dma_read.ready)
            await ctx.tick()
            assert list(ctx.get(dut.compute_read.data)) == [8 + 4 * (cycle % 2), -(8 + 4 * (cycle % 2)),
                                                             2 * (8 + 4 * (cycle % 2)), 0]
            assert not ctx.get(dut.dma_read.valid)
        ctx.set(dut.compute_read.addr, 5)                # bank 1: no conflict
        assert ctx.get(dut.dma_read.ready)
        await ctx.tick()
        ctx.set(dut.dma_read.en, 0)
        ctx.set(dut.compute_read.en, 0)
        assert ctx.get(dut.dma_read.valid) and ctx.get(dut.compute_read.valid)
        assert list(ctx.get(dut.dma_read.data)) == [4, -4, 8, 0]
        assert list(ctx.get(dut.compute_read.data)) == [5, -5, 10, 0]

    _simulate(dut, testbench)


def test_bad_parameters_are_rejected():
    shape = data.ArrayLayout(signed(8), 4)
    with pytest.raises(ValueError, match="banks must be a positive power of two, not 3"):
        BankedMemory(shape=shape, depth=12, banks=3)
    with pytest.raises(ValueError, match="depth must be a positive multiple of banks=4, not 10"):
        BankedMemory(shape=shape, depth=10, banks=4)
    with pytest.raises(TypeError, match="must be a data.ArrayLayout"):
        BankedMemory(shape=signed(32), depth=16, banks=2)
    with pytest.raises(ValueError, match="init has 17 rows, more than depth=16"):
        BankedMemory(shape=shape, depth=16, banks=2, init=[[0] * 4] * 17)


def test_converts_to_verilog():
    dut = BankedMemory(shape=data.ArrayLayout(signed(32), 4), depth=64, banks=2)
    text = verilog.convert(dut, name="banked_memory")
    assert "module banked_memory" in text
