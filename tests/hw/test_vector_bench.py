"""Shared test bench of the VECTOR and EPILOGUE unit tests (no tests of its own).

A unit wired to small scratchpad and accumulator memories, a numpy mirror of
both, and helpers to issue an instruction and count cycles and access pulses.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Elaboratable, Module, signed
from amaranth.lib import data
from amaranth.lib.memory import Memory as RAM
from amaranth.sim import Simulator

from braze.isa import Config, Instruction, Memory, arith

TINY = Config.preset("tiny")
MEM_ROWS = 64
INT32_MIN, INT32_MAX = arith.INT32_MIN, arith.INT32_MAX
PULSES = ("spad_read_pulse", "spad_write_pulse", "acc_read_pulse", "acc_write_pulse")


class Bench(Elaboratable):
    """The unit wired to a small scratchpad and accumulator, and a numpy mirror of both.

    The memories are simple dual-port RAMs like the real banks: synchronous
    read (data the cycle after ``en``), not transparent to a same-cycle write.
    """

    def __init__(self, unit, seed: int):
        self.unit = unit
        config = self.config = unit.config
        self.rng = np.random.default_rng(seed)
        self.mems = {
            Memory.SPAD: RAM(shape=data.ArrayLayout(signed(8), config.cols), depth=MEM_ROWS, init=[]),
            Memory.ACC: RAM(shape=data.ArrayLayout(signed(32), config.cols), depth=MEM_ROWS, init=[]),
        }
        self.mirror = {Memory.SPAD: np.zeros((MEM_ROWS, config.cols), np.int8),
                       Memory.ACC: np.zeros((MEM_ROWS, config.cols), np.int32)}

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        for memory, name in ((Memory.SPAD, "spad"), (Memory.ACC, "acc")):
            ram = self.mems[memory]
            m.submodules[name] = ram
            read, write = ram.read_port(), ram.write_port()
            unit_read, unit_write = getattr(self.unit, f"{name}_read"), getattr(self.unit, f"{name}_write")
            m.d.comb += [
                read.addr.eq(unit_read.addr), read.en.eq(unit_read.en), unit_read.data.eq(read.data),
                write.addr.eq(unit_write.addr), write.en.eq(unit_write.en), write.data.eq(unit_write.data),
            ]
        return m

    def random_fill(self):
        cols = self.config.cols
        spad = self.rng.integers(-128, 128, (MEM_ROWS, cols))
        spad[self.rng.random(spad.shape) < 0.1] = -128
        spad[self.rng.random(spad.shape) < 0.1] = 127
        self.mirror[Memory.SPAD] = spad.astype(np.int8)
        kind = self.rng.integers(0, 3, (MEM_ROWS, cols))
        acc = np.where(kind == 0, self.rng.integers(INT32_MIN, INT32_MAX + 1, (MEM_ROWS, cols)),
                       self.rng.integers(-400, 400, (MEM_ROWS, cols)))
        extremes = np.array([INT32_MIN, INT32_MAX, INT32_MIN + 1, INT32_MAX - 1, -1, 0, 1])
        acc = np.where(kind == 2, extremes[self.rng.integers(0, len(extremes), acc.shape)], acc)
        self.mirror[Memory.ACC] = acc.astype(np.int32)

    def load(self, ctx):
        for memory, ram in self.mems.items():
            for row in range(MEM_ROWS):
                ctx.set(ram.data[row], [int(v) for v in self.mirror[memory][row]])

    def check_memories(self, ctx, what):
        for memory, ram in self.mems.items():
            actual = np.array([[int(v) for v in ctx.get(ram.data[row])] for row in range(MEM_ROWS)])
            wrong = np.argwhere(actual != self.mirror[memory])
            assert not len(wrong), (f"{what}: {memory.name} row {wrong[0][0]} is "
                                    f"{actual[wrong[0][0]].tolist()}, expected "
                                    f"{self.mirror[memory][wrong[0][0]].tolist()}")

    async def execute(self, ctx, insn: Instruction, config_regs: dict[str, int]):
        """Issue one instruction; return (cycles from acceptance to done, pulse counts)."""
        unit = self.unit
        for name, value in config_regs.items():
            ctx.set(getattr(unit, name), value)
        ctx.set(unit.insn.payload.as_value(), insn.encode())
        ctx.set(unit.insn.valid, 1)
        await ctx.tick().until(unit.insn.ready)
        ctx.set(unit.insn.valid, 0)
        return await self.wait_done(ctx)

    async def wait_done(self, ctx, limit: int = 1000):
        unit = self.unit
        counts = dict.fromkeys(PULSES, 0)
        busy_cycles = 0
        for cycle in range(1, limit):
            _, _, done, busy, *pulses = await ctx.tick().sample(
                unit.done, unit.busy, *(getattr(unit, name) for name in PULSES))
            busy_cycles += busy
            for name, value in zip(PULSES, pulses, strict=True):
                counts[name] += value
            if done:
                assert busy_cycles == cycle, "busy must be high from acceptance to done"
                return cycle, counts
        raise AssertionError(f"no done within {limit} cycles")


def run(bench: Bench, testbench):
    sim = Simulator(bench)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
