"""The instruction fetch unit on its own: words and pcs in order on every bus width, back-pressure,
stop and restart with requests still in flight, AXI errors and an unaligned base."""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from braze.hw.axi import AXI4ReadMaster
from braze.hw.decoder import a_extent_value
from braze.hw.fetch import Fetch
from braze.isa import INSN_BYTES, Config
from braze.sim.axi_memory import AXI4Memory

SIZE = 1 << 14


def run_fetch(bus_bits: int, runs: list[tuple[int, int]], *, seed: int, ready: float = 0.5,
              error_regions=(), stall=0.3, memory_outstanding: int = 8, gate: float = 0.0, gap: int = 12,
              redirects: dict[int, int] | None = None, changes: dict[str, int] | None = None,
              refused: list[int] | None = None) -> tuple[list[list[tuple[int, int, int]]], np.ndarray]:
    """For each (base, words): start at base, take that many words with random ready, then stop.

    ``gate`` is the probability that the read master refuses a request in a cycle, so that
    requests stay offered (held) for a while.  ``redirects`` {n: target}: in every run, once n
    words are taken, pulse ``redirect`` to ``target`` (as a taken branch does; the next word
    is not taken in that cycle).  ``changes``: configuration fields (``fetch_skid``).
    ``refused``: gets one entry per cycle in which the unit refused an offered data beat.
    """
    config = Config.preset("tiny").replace(name="fetch_test", dma_bus_bits=bus_bits, **(changes or {}))
    m = Module()
    m.submodules.fetch = fetch = Fetch(config)
    m.submodules.master = master = AXI4ReadMaster(data_width=bus_bits, max_outstanding=2)
    gate_open = Signal(init=1)
    m.d.comb += [
        master.req.payload.eq(fetch.req.payload),
        master.req.valid.eq(fetch.req.valid & gate_open),
        fetch.req.ready.eq(master.req.ready & gate_open),
    ]
    wiring.connect(m, master.data, fetch.data)
    contents = np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)
    memory = AXI4Memory(master.m_axi, size=SIZE, read_latency=6, stall=stall, seed=seed,
                        max_outstanding=memory_outstanding, error_regions=error_regions,
                        data=contents.tobytes())
    sim = Simulator(m)
    sim.add_clock(1e-8)
    memory.add_to(sim)
    received: list[list[tuple[int, int, int]]] = []
    rng = random.Random(seed)

    async def testbench(ctx):
        for base, count in runs:
            ctx.set(fetch.prog_base, base)
            ctx.set(fetch.stop, 0)
            ctx.set(fetch.start, 1)
            await ctx.tick()
            ctx.set(fetch.start, 0)
            words = []
            redirected = set()      # word counts at which the redirect has been made
            for _ in range(2000):
                target = (redirects or {}).get(len(words))
                pending = target is not None and len(words) not in redirected
                redirect = pending and rng.random() < 0.5
                if redirect:
                    redirected.add(len(words))
                ctx.set(fetch.redirect, redirect)
                ctx.set(fetch.redirect_pc, target or 0)
                ctx.set(fetch.fetch.ready, rng.random() < ready and not pending)
                _, _, valid, ready_now, payload, beat, taken = await ctx.tick().sample(
                    fetch.fetch.valid, fetch.fetch.ready, fetch.fetch.payload, fetch.data.valid,
                    fetch.data.ready)
                if refused is not None and beat and not taken:
                    refused.append(len(words))
                if valid and ready_now:
                    words.append((payload.word.as_value().value, payload.pc, payload.error))
                    # The word's MATMUL A extent comes with it, computed as it entered the FIFO.
                    if not payload.error:
                        assert payload.a_extent == a_extent_value(config, words[-1][0]), f"pc {payload.pc:#x}"
                    if len(words) == count:
                        break
            ctx.set(fetch.redirect, 0)
            ctx.set(fetch.fetch.ready, 0)
            ctx.set(fetch.stop, 1)
            received.append(words)
            # Leave requests in flight: the next start must drop their beats.
            await ctx.tick().repeat(rng.randrange(1, gap))
        await ctx.tick().repeat(60)

    async def gatekeeper(ctx):
        gate_rng = random.Random(seed + 1)
        async for _ in ctx.tick():
            ctx.set(gate_open, gate_rng.random() >= gate)

    sim.add_testbench(testbench)
    sim.add_process(gatekeeper)
    sim.run()
    return received, contents


def word_at(contents: np.ndarray, pc: int) -> int:
    return int.from_bytes(contents[pc:pc + INSN_BYTES].tobytes(), "little")


@pytest.mark.parametrize("bus_bits, changes", [(64, {}), (128, {}), (256, {}),
                                              (256, {"fetch_skid": 1})])
def test_words_in_order_across_restarts(bus_bits, changes):
    runs = [(0x100, 23), (0x1F0, 5), (0x810, 40), (0x0, 1)]
    received, contents = run_fetch(bus_bits, runs, seed=bus_bits, changes=changes)
    for (base, count), words in zip(runs, received, strict=True):
        assert len(words) == count
        for index, (word, pc, error) in enumerate(words):
            assert pc == base + index * INSN_BYTES
            assert word == word_at(contents, pc), f"word at {pc:#x}"
            assert not error


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_restart_while_a_request_is_held(seed):
    """Requests are refused most of the time: a restart must neither change a held request nor
    let it shift the new run's addresses."""
    runs = [(0x100, 3), (0x400, 9), (0x800, 2), (0xC00, 6), (0x200, 1), (0x300, 5), (0x600, 1), (0x700, 4)]
    received, contents = run_fetch(64, runs, seed=seed, ready=0.9, gate=0.8, gap=3)
    for (base, count), words in zip(runs, received, strict=True):
        assert [(w, pc) for w, pc, _ in words] == [(word_at(contents, base + 16 * i), base + 16 * i)
                                                   for i in range(count)]


def test_full_fifo_back_pressure():
    """A consumer that is rarely ready: the fetch never overruns its FIFO or loses a word."""
    runs = [(0x40, 30)]
    received, contents = run_fetch(64, runs, seed=5, ready=0.05)
    assert [(w, pc) for w, pc, _ in received[0]] == [(word_at(contents, 0x40 + 16 * i), 0x40 + 16 * i)
                                                     for i in range(30)]


@pytest.mark.parametrize("bus_bits", [64, 256])
def test_error_response_marks_the_word(bus_bits):
    runs = [(0x200, 8)]
    received, _ = run_fetch(bus_bits, runs, seed=9, error_regions=[(0x240, 0x250)])
    errors = [pc for _, pc, error in received[0] if error]
    # The whole beat holding the failing bytes is in error: on a 256-bit bus, two words.
    bus_bytes = bus_bits // 8
    failing_beat = 0x240 // bus_bytes * bus_bytes
    assert errors == list(range(failing_beat, failing_beat + max(bus_bytes, INSN_BYTES), INSN_BYTES))


def test_unaligned_base_is_one_error_word():
    received, _ = run_fetch(128, [(0x108, 1), (0x110, 2)], seed=3)
    assert [(pc, error) for _, pc, error in received[0]] == [(0x108, 1)]
    assert [(pc, error) for _, pc, error in received[1]] == [(0x110, 0), (0x120, 0)]


@pytest.mark.parametrize("bus_bits, changes", [(64, {}), (128, {}), (256, {}), (256, {"fetch_skid": 1})])
def test_redirect_drops_the_fetched_words_and_continues_at_the_target(bus_bits, changes):
    """A taken branch mid-stream, to a target ahead, behind and in the middle of a bus word."""
    redirects = {3: 0x530, 7: 0x110, 12: 0x2F0}
    received, contents = run_fetch(bus_bits, [(0x100, 20), (0x400, 9)], seed=bus_bits + 1,
                                   redirects=redirects, ready=0.7, changes=changes)
    for base, words in zip((0x100, 0x400), received, strict=True):
        expected_pcs, pc = [], base
        for index in range(len(words)):
            expected_pcs.append(pc)
            pc = redirects.get(index + 1, pc + INSN_BYTES)
        assert [pc for _, pc, _ in words] == expected_pcs
        assert all(word == word_at(contents, pc) and not error for word, pc, error in words)


def test_skid_takes_a_requests_beats_at_once():
    """Config.fetch_skid on a 256-bit bus: a request's second beat is taken while the first is split into
    words, so the read channel (and the LOAD beats behind it) seldom waits for the fetch unit -- only
    when requests come back to back faster than a word a cycle -- and the words are the same."""
    runs = [(0x100, 40), (0x210, 17)]
    refusals = {}
    for skid in (0, 1):
        refused: list[int] = []
        received, contents = run_fetch(256, runs, seed=21, ready=0.6, stall=0.0, changes={"fetch_skid": skid},
                                       refused=refused)
        for (base, count), words in zip(runs, received, strict=True):
            assert [(w, pc) for w, pc, _ in words] == [(word_at(contents, base + 16 * i), base + 16 * i)
                                                       for i in range(count)]
        refusals[skid] = len(refused)
    # Without the skid every request's second beat waits (57 words: about 15 requests).
    assert refusals[0] >= 15 and refusals[1] * 10 <= refusals[0], refusals
