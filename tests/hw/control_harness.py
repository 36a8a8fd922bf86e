"""Simulation harness for the control core: a fetch model, fake execution clients and a recorder.

The fake clients accept instructions after random delays and report done after random latencies;
a monitor records, per clock edge, every transfer, done, retire pulse and configuration register.
:func:`check_trace` then checks a trace against the program's ordering rules.
"""

import dataclasses
import random

from amaranth.sim import Simulator

from braze.hw.control import QUEUED_UNITS, Control
from braze.hw.decoder import a_extent_value
from braze.isa import INSN_BYTES, Config, ConfigReg, ErrorCause, Instruction, Opcode, Unit
from braze.isa.encoding import CONTROL_FLOW_OPCODES, FORMAT_BY_OPCODE
from braze.isa.timing import epilogue_runs_beside, matmul_clear_of_epilogue

BARRIERS = (Opcode.FENCE, Opcode.COUNTERS, Opcode.HALT)
#: Dependency flags and the token queue (producer, consumer) each names, per unit.
TOKEN_OF_FLAG = {
    (Unit.LOAD, "push_next"): (Unit.LOAD, Unit.COMPUTE),
    (Unit.LOAD, "pop_next"): (Unit.COMPUTE, Unit.LOAD),
    (Unit.COMPUTE, "pop_prev"): (Unit.LOAD, Unit.COMPUTE),
    (Unit.COMPUTE, "push_prev"): (Unit.COMPUTE, Unit.LOAD),
    (Unit.COMPUTE, "push_next"): (Unit.COMPUTE, Unit.STORE),
    (Unit.COMPUTE, "pop_next"): (Unit.STORE, Unit.COMPUTE),
    (Unit.STORE, "pop_prev"): (Unit.COMPUTE, Unit.STORE),
    (Unit.STORE, "push_prev"): (Unit.STORE, Unit.COMPUTE),
}


@dataclasses.dataclass
class Trace:
    """What happened, by clock edge (edges count from 0)."""

    program: list                     # Instruction or raw int word, one per pc
    base: int
    starts: dict                      # unit -> [(edge, word)] transfers (CONFIG: register write)
    retires: dict                     # unit -> [edge]; Unit.CONTROL: [(edge, opcode)]
    counters_starts: list             # edges of transfers on the counters port
    fetched: list                     # edges at which fetch transfers happened, in order
    busy: list                        # per edge, tuple of busy bits (load, compute, store)
    stall_dep: list
    stall_fetch: list
    queue_full_edges: int             # edges with a fetch offer refused while the slot was full
    done_edge: int | None
    error_edge: int | None
    cause: ErrorCause
    error_pc: int
    config_regs: dict
    edges: int
    run_cycles: int = 0
    scalar_regs: tuple = ()           # r0..r7 at the end
    epilogue_dones: list = dataclasses.field(default_factory=list)   # edges of epilogue_done (beside)

    def pc(self, index: int) -> int:
        return self.base + index * INSN_BYTES


def unit_of(insn) -> Unit:
    return insn.unit if isinstance(insn, Instruction) else None


def run(config: Config, program: list, *, seed: int = 0, base: int = 0x1000, latency=(1, 8),
        ready_prob: float = 0.7, fetch_prob: float = 0.8, unit_errors: dict | None = None,
        counters_error: dict | None = None, fetch_errors: frozenset = frozenset(),
        max_edges: int = 5000, latency_of: dict | None = None, cycle_limit: int = 0,
        predicate_value: int = 0, scalar_writes: dict | None = None) -> Trace:
    """Run ``program`` (Instructions or raw words) on a Control; return the trace.

    ``unit_errors`` maps a pc to the ErrorCause its client reports; ``fetch_errors`` holds pcs
    whose fetch fails; ``latency_of`` overrides the latency range per unit (``None``: the counters
    client).  A latency range from 0 lets clients report done in the cycle they take an instruction.
    ``cycle_limit`` is the watchdog's; edge ``e`` is run cycle ``e``.  The fetch model follows
    taken branches (``redirect``); the compute client reports ``predicate_value`` as every
    PREDICATE's result, with ``predicate_done``; ``scalar_writes`` ({register: value}) are host
    writes before the start.  With ``Config.epilogue_overlap`` an EPILOGUE that runs beside the
    compute unit is handed to a client of its own (as in the accelerator, the EPILOGUE unit): the
    compute client is free at once, and that EPILOGUE's done comes on ``epilogue_done``.
    """
    dut = Control(config)
    unit_errors = unit_errors or {}
    counters_error = counters_error or {}
    latency_of = latency_of or {}
    words = [insn.encode() if isinstance(insn, Instruction) else insn for insn in program]
    # The pcs each client sees, in order (CONFIG runs inside the core, not on the compute client).
    pcs_of_unit = {unit: [base + i * INSN_BYTES for i, insn in enumerate(program)
                          if unit_of(insn) is unit and insn.opcode is not Opcode.CONFIG]
                   for unit in QUEUED_UNITS}
    ports = {Unit.LOAD: dut.load, Unit.COMPUTE: dut.compute, Unit.STORE: dut.store}
    # A PREDICATE's done is reported on predicate_done (never in the cycle it is taken).
    predicate_pcs = {base + i * INSN_BYTES for i, insn in enumerate(program)
                     if isinstance(insn, Instruction) and insn.opcode is Opcode.PREDICATE}
    beside_pcs = {base + i * INSN_BYTES for i, insn in enumerate(program)
                  if isinstance(insn, Instruction) and epilogue_runs_beside(insn, config)}
    trace = Trace(program, base, {u: [] for u in QUEUED_UNITS},
                  {u: [] for u in (*QUEUED_UNITS, Unit.CONTROL)},
                  [], [], [], [], [], 0, None, None, ErrorCause.NONE, 0, {}, 0)
    finished = [False]

    def client(port, unit):
        lo, hi = latency_of.get(unit, latency)
        pcs = pcs_of_unit.get(unit, [])

        errors = unit_errors if unit is not None else counters_error
        # Each process draws from its own generator: the simulator's order of processes within a
        # cycle is not fixed, and one shared generator made the same seed give different timings.
        rng = random.Random(f"{seed}:{unit}")

        def key(count):
            return pcs[count] if unit is not None and count < len(pcs) else count

        def report_done(ctx, current):
            if unit is Unit.COMPUTE and current in predicate_pcs:
                ctx.set(dut.predicate_done, 1)
                return
            ctx.set(port.done, 1)
            if current in errors:
                ctx.set(port.error, 1)
                ctx.set(port.cause, errors[current])

        async def process(ctx):
            current, remaining, count, instant = None, 0, 0, False
            beside_left = 0                 # cycles until the EPILOGUE beside the unit is done
            async for _, _, valid, ready in ctx.tick().sample(port.insn.valid, port.insn.ready):
                ctx.set(port.done, 0)
                ctx.set(port.error, 0)
                if unit is Unit.COMPUTE:
                    ctx.set(dut.predicate_done, 0)
                    if beside_pcs:
                        ctx.set(dut.epilogue_done, 0)
                        if beside_left:
                            beside_left -= 1
                            if beside_left == 0:
                                ctx.set(dut.epilogue_done, 1)
                if valid and ready and unit is Unit.COMPUTE and key(count) in beside_pcs:
                    count += 1
                    beside_left = rng.randint(max(lo, 1), hi)
                elif valid and ready:
                    current = None if instant else key(count)
                    count += 1
                    remaining = rng.randint(max(lo, 1), hi)
                elif current is not None:
                    remaining -= 1
                    if remaining == 0:
                        report_done(ctx, current)
                        current = None
                accept = current is None and rng.random() < ready_prob
                # Latency 0: done with the transfer, which a pending offer guarantees for this cycle.
                instant = (accept and lo == 0 and valid and not ready and rng.random() < 0.5
                           and key(count) not in predicate_pcs and key(count) not in beside_pcs)
                if instant:
                    report_done(ctx, key(count))
                ctx.set(port.insn.ready, accept)

        return process

    async def fetcher(ctx):
        rng = random.Random(f"{seed}:fetch")
        index = 0
        ctx.set(dut.fetch.valid, 0)
        async for _, _, valid, ready, redirect, target in ctx.tick().sample(
                dut.fetch.valid, dut.fetch.ready, dut.redirect, dut.redirect_pc):
            if valid and ready:
                index += 1
            if redirect:                        # a taken branch: the offer is dropped, fetch restarts
                index = (target - base) // INSN_BYTES
                valid = ready = False
                ctx.set(dut.fetch.valid, 0)
            if 0 <= index < len(words) and rng.random() < fetch_prob:
                pc = base + index * INSN_BYTES
                ctx.set(dut.fetch.payload.word.as_value(), words[index])
                ctx.set(dut.fetch.payload.pc, pc)
                ctx.set(dut.fetch.payload.error, pc in fetch_errors)
                # What the fetch unit computes as a word enters its FIFO.
                ctx.set(dut.fetch.payload.a_extent, a_extent_value(config, words[index]))
                ctx.set(dut.fetch.valid, 1)
            elif not (valid and not ready):
                ctx.set(dut.fetch.valid, 0)     # a stream offer is only withdrawn after a transfer

    async def testbench(ctx):
        for register, value in (scalar_writes or {}).items():
            ctx.set(dut.scalar_write.en, 1)
            ctx.set(dut.scalar_write.index, register)
            ctx.set(dut.scalar_write.value, value)
            await ctx.tick()
        ctx.set(dut.scalar_write.en, 0)
        ctx.set(dut.predicate_value, predicate_value)
        ctx.set(dut.prog_base, base)
        ctx.set(dut.cycle_limit, cycle_limit)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        edge = 0
        last_regs = None
        samples = (dut.load.insn.valid, dut.load.insn.ready, dut.load.insn.payload.as_value(),
                   dut.compute.insn.valid, dut.compute.insn.ready, dut.compute.insn.payload.as_value(),
                   dut.store.insn.valid, dut.store.insn.ready, dut.store.insn.payload.as_value(),
                   dut.counters.insn.valid, dut.counters.insn.ready,
                   dut.fetch.valid, dut.fetch.ready, dut.retired.as_value(), dut.config_regs.as_value(),
                   dut.busy.as_value(), dut.stall_dep, dut.stall_fetch, dut.done, dut.error)
        if config.epilogue_overlap:
            samples += (dut.epilogue_done,)
        async for _, _, *values in ctx.tick().sample(*samples):
            if config.epilogue_overlap and values.pop():
                trace.epilogue_dones.append(edge)
            (lv, lr, lp, cv, cr, cp, sv, sr, sp, kv, kr, fv, fr, retired, regs, busy, stall_dep, stall_fetch,
             done, error) = values
            for unit, (v, r, p) in zip(QUEUED_UNITS, ((lv, lr, lp), (cv, cr, cp), (sv, sr, sp)), strict=True):
                if v and r:
                    trace.starts[unit].append((edge, p))
            if kv and kr:
                trace.counters_starts.append(edge)
            if fv and fr:
                trace.fetched.append(edge)
            if fv and not fr:
                trace.queue_full_edges += 1
            if last_regs is not None and regs != last_regs:
                # A CONFIG wrote the register at the previous edge.
                trace.starts[Unit.COMPUTE].append((edge - 1, "config"))
            last_regs = regs
            for opcode in Opcode:
                if opcode in CONTROL_FLOW_OPCODES:          # not implemented by this RTL: no retire pulse
                    continue
                if retired >> dut.retired.shape()[opcode.name.lower()].offset & 1:
                    unit = FORMAT_BY_OPCODE[opcode].unit
                    trace.retires[unit].append((edge, opcode) if unit is Unit.CONTROL else edge)
            trace.busy.append(tuple(busy >> i & 1 for i in range(3)))
            trace.stall_dep.append(stall_dep)
            trace.stall_fetch.append(stall_fetch)
            if done and trace.done_edge is None:
                trace.done_edge = edge
            if error and trace.error_edge is None:
                trace.error_edge = edge
            edge += 1
            if done or error or edge >= max_edges:
                break
        trace.edges = edge
        trace.cause = ctx.get(dut.cause)
        trace.error_pc = ctx.get(dut.error_pc)
        trace.run_cycles = ctx.get(dut.run_cycles)
        trace.scalar_regs = tuple(ctx.get(dut.scalar_regs[index]) for index in range(len(dut.scalar_regs)))
        names = [reg.name.lower() for reg in ConfigReg]
        trace.config_regs = {name: ctx.get(dut.config_regs[name]) for name in names}
        # Keep (starts of) CONFIG in compute order: they were appended out of edge order.
        trace.starts[Unit.COMPUTE].sort(key=lambda item: item[0])
        finished[0] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for unit, port in ports.items():
        sim.add_process(client(port, unit))
    sim.add_process(client(dut.counters, None))
    sim.add_process(fetcher)
    sim.add_testbench(testbench)
    sim.run()         # the clients and the fetcher are background processes: this ends with the testbench
    assert finished[0]
    return trace


_DUMMY = {
    Opcode.LOAD: dict(mem="spad", addr=0, rows=1, len=1),
    Opcode.STORE: dict(mem="spad", addr=0, rows=1, len=1, dram=0, stride=0),
    Opcode.MATMUL: dict(acc=0, a=0, b=0, a_stride=1, m=1, n=1, k=1),
    Opcode.EPILOGUE: dict(src=0, m=1, n=1, dst=0),
    Opcode.VECTOR: dict(op="mov", dst_mem="spad", src1_mem="spad", dst=0, src1=0, rows=1),
    Opcode.CONFIG: dict(reg="clip_lo", value=0),
    Opcode.COUNTERS: dict(dram=0),
}


def _dummy_args(opcode: Opcode) -> dict:
    return _DUMMY.get(opcode, {})


def make(opcode: Opcode, tag: int = 0, **deps) -> Instruction:
    """A legal instruction of ``opcode`` whose word carries ``tag`` (so that words differ)."""
    args = dict(_dummy_args(opcode))
    if opcode in (Opcode.LOAD, Opcode.STORE):
        args["dram"] = tag * 16
    elif opcode is Opcode.MATMUL:
        args["a_stride"] = tag
    elif opcode is Opcode.VECTOR:
        args["imm"] = tag
    elif opcode is Opcode.CONFIG:
        args["value"] = 1000 + tag
        args["reg"] = ("clip_lo", "clip_hi", "out_zp")[tag % 3]
    elif opcode is Opcode.COUNTERS:
        args["dram"] = tag * 256
    return Instruction.make(opcode, **args, **deps)


def check_trace(trace: Trace, config: Config, executed: int | None = None):
    """Assert that the first ``executed`` instructions ran in an order every rule allows.

    Per unit, program order; every pop after the push it consumes; no token queue above its
    capacity; nothing across a barrier.
    """
    program = trace.program[:executed] if executed is not None else trace.program
    # Per unit: program indices, start and retire edges.
    start_of, retire_of = {}, {}
    for unit in QUEUED_UNITS:
        indices = [i for i, insn in enumerate(program) if unit_of(insn) is unit]
        starts = trace.starts[unit]
        assert len(starts) >= len(indices) or executed is not None, f"{unit.name}: only {len(starts)} started"
        for n, (index, (edge, word)) in enumerate(zip(indices, starts, strict=False)):
            insn = program[index]
            if word == "config":
                assert insn.opcode is Opcode.CONFIG, f"{unit.name} #{n}: expected {insn}, a CONFIG ran"
            else:
                assert word == insn.encode(), f"{unit.name} #{n}: expected {insn}, got word 0x{word:x}"
            start_of[index] = edge
        for index, edge in zip(indices, trace.retires[unit], strict=False):
            retire_of[index] = edge
    barrier_indices = [i for i, insn in enumerate(program) if unit_of(insn) is Unit.CONTROL]
    control_retires = trace.retires[Unit.CONTROL]
    counters_starts = iter(trace.counters_starts)
    for index, (edge, opcode) in zip(barrier_indices, control_retires, strict=False):
        assert opcode is program[index].opcode
        retire_of[index] = edge
        start_of[index] = next(counters_starts) if opcode is Opcode.COUNTERS else edge

    # Every unit starts an instruction only after the previous one of that unit retired -- except, on the
    # compute unit, a MATMUL after a MATMUL with Config.matmul_overlap (after it started), and after an
    # EPILOGUE beside the unit with Config.epilogue_overlap (docs/isa.md): a MATMUL clear of its rows
    # after it started, with matmul_overlap one that is not from the cycle it completed (epilogue_done).
    beside_dones = iter(trace.epilogue_dones)
    done_of = {i: next(beside_dones, None) for i, insn in enumerate(program)
               if isinstance(insn, Instruction) and epilogue_runs_beside(insn, config) and i in start_of}
    for unit in QUEUED_UNITS:
        indices = [i for i in range(len(program)) if unit_of(program[i]) is unit and i in start_of]
        for before, after in zip(indices, indices[1:], strict=False):
            first, second = program[before], program[after]
            earliest = retire_of.get(before)
            if config.matmul_overlap and first.opcode is second.opcode is Opcode.MATMUL:
                earliest = start_of[before]
            elif before in done_of and second.opcode is Opcode.MATMUL:
                if matmul_clear_of_epilogue(second, first, config):
                    earliest = start_of[before]
                elif config.matmul_overlap and done_of[before] is not None:
                    earliest = done_of[before] - 1
            where = f"{unit.name}: #{after} overlaps #{before}"
            assert earliest is not None and start_of[after] > earliest, where
            if after in retire_of:
                assert retire_of[after] >= retire_of[before], f"{unit.name}: #{after} retired before it"

    # Barriers: everything earlier retired before, nothing later started before the barrier retired.
    for b in barrier_indices:
        if b not in retire_of:
            continue
        for i in range(len(program)):
            if i < b and i in retire_of:
                assert retire_of[i] < start_of[b], f"#{i} retired at {retire_of[i]}, barrier #{b} ran"
            if i < b:
                assert i in retire_of, f"barrier #{b} ran before #{i} retired"
            if i > b and i in start_of:
                assert start_of[i] > retire_of[b], f"#{i} started across barrier #{b}"

    # Tokens: the k-th pop of a queue starts after the k-th push retired; never above capacity.
    for token in set(TOKEN_OF_FLAG.values()):
        pushes = [i for i, insn in enumerate(program) if isinstance(insn, Instruction) and any(
            TOKEN_OF_FLAG.get((insn.unit, f)) == token for f in insn.deps if f.startswith("push"))]
        pops = [i for i, insn in enumerate(program) if isinstance(insn, Instruction) and any(
            TOKEN_OF_FLAG.get((insn.unit, f)) == token for f in insn.deps if f.startswith("pop"))]
        for push, pop in zip(pushes, pops, strict=False):
            if pop in start_of:
                assert push in retire_of and start_of[pop] > retire_of[push], \
                    f"token {token}: pop #{pop} before push #{push}"
        events = sorted([(retire_of[i], +1) for i in pushes if i in retire_of] +
                        [(start_of[i], -1) for i in pops if i in start_of])
        level = 0
        for edge, delta in events:
            level += delta
            assert level <= config.token_depth, f"token {token} over capacity at edge {edge}"
