"""Control core: decode, in-order dispatch to the unit queues, dependency tokens and barriers.

Fetched words arrive on a stream in program order.  The dispatcher decodes
each one and writes it into the queue of its unit (load, compute or store),
or, for the barriers ``FENCE``, ``COUNTERS`` and ``HALT``, waits until every
queue is empty and every unit idle and then executes it.  Each unit takes
its queue's head instruction once the dependency tokens it pops are
available, hands it to its execution client, and pushes its tokens when the
client reports done (see the dependency rules in :mod:`braze.isa.encoding`).
``CONFIG`` is executed here: it writes the configuration registers, which are
outputs for the EPILOGUE/VECTOR units.

Control flow (issue 13; the rules are docs/isa.md's "Control flow"): the scalar registers r0..r7
live here, outside the state that ``start`` clears, so that what the host writes (``scalar_write``)
and what a run leaves keep their values across runs.  ``SCALAR`` and ``BRANCH`` execute in the
dispatcher's slot, one per cycle, in program order: SCALAR writes its register, a taken BRANCH
asks the fetch unit to restart at its target (``redirect``; the words already fetched behind it
are dropped) or stops with BRANCH_RANGE at its pc when the target lies below the program base.
The register offsets of LOAD, STORE, MATMUL and PREDICATE are added to their address fields in the
slot, from the registers as the instructions before have left them, and the sum is what is range
checked (same causes as the reference model) and what the unit's queue receives (the register
fields cleared).  PREDICATE is dispatched to the compute unit like a VECTOR, with its tokens; its
client reports the result on ``predicate_value`` with ``predicate_done``, which writes register
``dst``.  A PREDICATE of scratchpad rows that pushes no token runs *beside* the compute unit: the
unit hands it over and is free for the next instruction, which may start while the PREDICATE
runs only if it is a MATMUL (it reads the scratchpad and writes the accumulator only, so neither
sees the other); whatever it is, it retires -- pushes its tokens -- only once the PREDICATE is
done, so the program-order semantics (and the reference model's race checks) are unchanged.
From dispatching a PREDICATE until it is done the dispatcher holds, in the slot, a word that names
its ``dst`` register (SCALAR dst/src1/src2, BRANCH a/b, a register-offset field) or is another
PREDICATE (its errors wait too), so later instructions see the result; other words go on.  The
result is written through its own register write port, as a SCALAR may write another register in
the same cycle.

Execution client contract (:data:`EXECUTION_PORT`, seen from the control
core): an instruction is handed over by a transfer on ``insn``; the client
then pulses ``done`` once when the instruction has completed (in the cycle of
the transfer at the earliest), with ``error`` and ``cause`` set in that same
cycle if it failed.  A client has at most one instruction at a time: the core
offers the next one only after the previous one's ``done`` -- except the load
client with ``Config.load_overlap`` > 1, which may hold that many LOADs: the core
offers the next LOAD whenever its tokens are there and fewer are held, the client
reports their ``done`` in program order (never in the cycle it takes one), and
they retire and push their tokens in program order -- and the compute client with
``Config.matmul_overlap``, which may hold two MATMULs: while a MATMUL executes the core offers the
next one if it is a MATMUL too, moving the executing one into a lane of its own (one deep); the
client's dones come in program order, the lane's MATMUL retires first, and no other compute
instruction starts before both have retired (docs/isa.md).

On the first illegal or failing instruction (or a fetch error, or a
deadlock) the core stops dispatching and starting instructions (queued ones
are dropped), waits for the instructions its clients hold to report done, and
then reports ``error`` with the cause and the pc of the offending instruction.
A deadlock is reported when, for :data:`DEADLOCK_CYCLES` cycles in a row,
every unit is either empty or blocked on a token (a pop with no token, or a
push into a full token queue) with at least one blocked, no client holds an
instruction, and the dispatcher is blocked (full queue, or a barrier) or
halted.  A dispatcher waiting for fetch is not blocked: the next word may
push the missing token.

Timing: a word can be handed to its client two cycles after its fetch
transfer (three with ``Config.dispatch_stage=1``: the slot resolves and range-checks the word, and a
dispatch stage writes it into its queue a cycle later; four with ``dispatch_stage=2``: the slot
resolves it, a check stage range-checks it, the dispatch stage writes it; see
:class:`braze.isa.Config` and docs/isa.md); a unit offers its next instruction the cycle after the
previous one's ``done`` (if the head is there and its tokens are available); the dispatcher takes
one word per cycle, and a barrier retires (``FENCE``, ``HALT``) or is offered to its client
(``COUNTERS``) in the first cycle in which everything has drained.

Watchdog: the core counts *run cycles*, ``run_cycles``: the cycles of the run from its first
cycle (the one after ``start``), numbered from 0, while it has neither stopped on an error nor
retired HALT; the count stops there (and saturates at 2**32 - 1), and a COUNTERS ``reset`` does
not touch it.  With a nonzero ``cycle_limit`` L, instructions may be dispatched and started in
run cycles 0 .. L-1 only: in run cycle L (``run_cycles == L``) nothing is dispatched, started
or retired by the dispatcher, and, unless another error is raised in that same cycle or HALT
has retired, the core stops with ``WATCHDOG``.  Its pc is that of the first instruction not yet
dispatched: the word in the dispatcher's slot (a barrier counts as dispatched once it executes:
FENCE and HALT retire at once, COUNTERS is handed to its client), else the word after the last
one fetched (``prog_base`` before the first).  As with every error, instructions already handed
to their clients complete first, and queued ones are dropped; ``run_cycles`` stays at L.

Performance-counter events: ``busy.load``/``busy.store`` are the cycles the
DMA clients hold an instruction; ``stall_dep`` and ``stall_fetch`` are the
per-cycle increments of ``STALL_DEP`` and ``STALL_FETCH``; ``retired.<op>``
those of ``INSN_<OP>``.  ``COUNTERS`` retires when its client reports done,
so it is counted after its own snapshot.  ``done & running`` and
``error & running`` are one-cycle pulses (``running`` drops the cycle after).
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Shape, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from braze.isa import INSN_BYTES, INSTRUCTION, Config, ConfigReg, ErrorCause, Opcode, Unit
from braze.isa.counters import CYCLE_LIMIT_BITS
from braze.isa.encoding import (
    CONTROL_FLOW_OPCODES,
    FORMAT_BY_OPCODE,
    REGISTER_OFFSETS,
    SCALAR_REGS,
    BranchCond,
    Memory,
)

from .decoder import A_EXTENT_BITS, Decoder, a_extent

__all__ = [
    "CONFIG_REGS", "CYCLE_BITS", "DEADLOCK_CYCLES", "EXECUTION_PORT", "FETCH_ENTRY", "PC_BITS", "QUEUE_ENTRY",
    "QUEUED_UNITS", "RETIRED", "SCALAR_FILE", "SCALAR_WRITE", "UNIT_FLAGS", "Control",
]

PC_BITS = 32
#: Width of the watchdog's cycle limit and run-cycle count (the CYCLE_LIMIT and RUN_CYCLES registers).
CYCLE_BITS = CYCLE_LIMIT_BITS

#: One fetched instruction.  ``error`` marks a word the fetch could not read (AXI error response);
#: it travels in program order with the other words so that its ``pc`` is the failing address.
#: ``a_extent`` is the word's MATMUL A extent (:func:`braze.hw.decoder.a_extent`), computed by the
#: fetch unit as the word enters its FIFO: the range check's multiplication is then a cycle (or
#: more) ahead of the decode in the dispatcher's slot, which keeps it off the clock's critical path.
#: With ``Config.dispatch_stage=2`` it is 0: the slot computes it, a cycle ahead of the check stage.
FETCH_ENTRY = data.StructLayout({"word": INSTRUCTION, "pc": unsigned(PC_BITS), "error": unsigned(1),
                                 "a_extent": unsigned(A_EXTENT_BITS)})

#: One entry of a unit's instruction queue.
QUEUE_ENTRY = data.StructLayout({"word": INSTRUCTION, "pc": unsigned(PC_BITS)})

#: The connection to one execution client, from the control core's side.
EXECUTION_PORT = wiring.Signature({
    "insn": Out(stream.Signature(INSTRUCTION)),
    "done": In(1),
    "error": In(1),
    "cause": In(ErrorCause),
})

#: Units with an instruction queue, in pipeline order: each one's previous and next neighbour.
QUEUED_UNITS = (Unit.LOAD, Unit.COMPUTE, Unit.STORE)

#: One bit per queued unit, by lower-case unit name.
UNIT_FLAGS = data.StructLayout({unit.name.lower(): unsigned(1) for unit in QUEUED_UNITS})

#: One retire pulse per opcode, by lower-case opcode name.
RETIRED = data.StructLayout({opcode.name.lower(): unsigned(1) for opcode in Opcode
                             if opcode not in CONTROL_FLOW_OPCODES})

#: The configuration registers, by lower-case register name, as wide as CONFIG's ``value``.
CONFIG_REGS = data.StructLayout({reg.name.lower(): FORMAT_BY_OPCODE[Opcode.CONFIG].field("value").shape
                                 for reg in ConfigReg})

#: The scalar registers r0..r7 (int32; r0 is always 0).
SCALAR_FILE = data.ArrayLayout(signed(32), SCALAR_REGS)

#: A host write of one scalar register (``en`` for one cycle; index 0 is ignored, r0 stays 0).
SCALAR_WRITE = data.StructLayout({"en": unsigned(1), "index": range(SCALAR_REGS), "value": signed(32)})

#: Cycles the deadlock condition must hold before DEADLOCK is reported.
DEADLOCK_CYCLES = 4


class _UnitState(enum.Enum, shape=2):
    IDLE = 0      # no instruction, or the head waits for its tokens
    EXECUTE = 1   # the client holds the instruction
    PUSH = 2      # completed; waits for room in a token queue it pushes to


class _CountersState(enum.Enum, shape=2):
    IDLE = 0
    EXECUTE = 1


class _TokenQueue:
    """A dependency-token counter between two neighbouring units."""

    def __init__(self, producer: Unit, consumer: Unit, depth: int):
        self.name = f"{producer.name.lower()}_to_{consumer.name.lower()}"
        self.depth = depth
        self.count = Signal(range(depth + 1), name=f"tokens_{self.name}")
        self.push = Signal(name=f"push_{self.name}")
        self.pop = Signal(name=f"pop_{self.name}")
        self.available = self.count != 0
        self.room = self.count != depth

    def elaborate_into(self, m: Module):
        with m.If(self.push & ~self.pop):
            m.d.sync += self.count.eq(self.count + 1)
        with m.Elif(self.pop & ~self.push):
            m.d.sync += self.count.eq(self.count - 1)


def _client_report(m: Module, name: str, port, takes_own_done=None) -> tuple:
    """A client's (done, error, cause), as seen while it executes an instruction.

    A client may report done in the very cycle it takes the instruction; that report is kept
    for the cycle after, when the core waits for it.  ``takes_own_done``: when given, only a done in
    a take cycle in which it is high is the taken instruction's (else it is an earlier one's).
    """
    early_done = Signal(name=f"{name}_early_done")
    early_error = Signal(name=f"{name}_early_error")
    early_cause = Signal(ErrorCause, name=f"{name}_early_cause")
    taken_and_done = port.insn.valid & port.insn.ready & port.done
    if takes_own_done is not None:
        taken_and_done = taken_and_done & takes_own_done
    m.d.sync += early_done.eq(taken_and_done)
    with m.If(taken_and_done):
        m.d.sync += [early_error.eq(port.error), early_cause.eq(port.cause)]
    return (port.done | early_done, Mux(early_done, early_error, port.error),
            Mux(early_done, early_cause, port.cause))


def _token_checks(m: Module, name: str, pop_deps, push_deps, flag_tokens: dict) -> tuple[Signal, Signal]:
    """(the tokens ``pop_deps`` pops are there, the queues ``push_deps`` pushes to have room)."""
    tokens_ready = Signal(name=f"{name}_tokens_ready")
    m.d.comb += tokens_ready.eq(Cat(
        ~pop_deps[flag] | flag_tokens[flag].available
        for flag in ("pop_prev", "pop_next") if flag_tokens[flag] is not None).all())
    push_room = Signal(name=f"{name}_push_room")
    m.d.comb += push_room.eq(Cat(
        ~push_deps[flag] | flag_tokens[flag].room
        for flag in ("push_prev", "push_next") if flag_tokens[flag] is not None).all())
    return tokens_ready, push_room


def _names_register(word) -> Value:
    """The word is a LOAD, STORE, MATMUL or PREDICATE with a nonzero register-offset field."""
    uses = []
    for opcode, offsets in sorted(REGISTER_OFFSETS.items(), key=lambda item: item[0].value):
        args = word.args[opcode.name.lower()]
        uses.append((word.opcode == opcode) & Cat(*(args[name] != 0 for name in offsets.values())).any())
    return Cat(*uses).any()


def _names_scalar_register(word, register) -> Value:
    """The word names scalar register ``register`` in the dispatcher: a SCALAR's dst/src1/src2, a
    BRANCH's a/b, a register-offset field (:func:`braze.isa.timing.scalar_registers` in hardware)."""
    named = [(word.opcode == Opcode.SCALAR) & Cat(*(word.args.scalar[name] == register
                                                    for name in ("dst", "src1", "src2"))).any(),
             (word.opcode == Opcode.BRANCH) & Cat(*(word.args.branch[name] == register
                                                    for name in ("a", "b"))).any()]
    for opcode, offsets in sorted(REGISTER_OFFSETS.items(), key=lambda item: item[0].value):
        args = word.args[opcode.name.lower()]
        named.append((word.opcode == opcode)
                     & Cat(*(args[name] == register for name in offsets.values())).any())
    return Cat(*named).any()


def _resolve_registers(m: Module, word, regs) -> data.View:
    """``word`` with its register offsets added to their fields (modulo the field's width) and the
    register fields cleared: :func:`braze.isa.model.resolve_registers` in hardware."""
    resolved = Signal(INSTRUCTION, name="resolved_word")
    m.d.comb += resolved.eq(word)
    with m.Switch(word.opcode):
        for opcode, offsets in sorted(REGISTER_OFFSETS.items(), key=lambda item: item[0].value):
            with m.Case(opcode):
                args, out = word.args[opcode.name.lower()], resolved.args[opcode.name.lower()]
                for field, register_field in offsets.items():
                    width = len(Value.cast(args[field]))
                    offset = regs[args[register_field][:SCALAR_REGS.bit_length() - 1]]
                    m.d.comb += [
                        out[field].eq((args[field] + offset)[:width]),
                        out[register_field].eq(0),
                    ]
    return resolved


class Control(wiring.Component):
    """The control core of the accelerator.

    Parameters
    ----------
    config : Config
        Sets the queue and token depths and the range checks of the decoder.

    Attributes
    ----------
    start : In(1)
        Pulse: clear all state (queues, tokens, configuration registers, status) and run.
        Ignored while running.
    soft_reset : In(1)
        Clear all state and stop.
    fetch : In(stream.Signature(FETCH_ENTRY))
        Fetched words in program order; the fetch unit starts at the program base on ``start``.
    prog_base : In(PC_BITS)
        The program base (the pc of the first word), for a watchdog stop before any word arrived.
    cycle_limit : In(CYCLE_BITS)
        The watchdog's limit in run cycles (0: none); see the module documentation.
    run_cycles : Out(CYCLE_BITS)
        Run cycles so far (the watchdog's count).
    load, compute, store : Out(EXECUTION_PORT)
        Execution clients: the DMA load engine, the compute units (MATMUL, EPILOGUE and VECTOR;
        CONFIG is executed here) and the DMA store engine.
    counters : Out(EXECUTION_PORT)
        The client that writes a counter snapshot for ``COUNTERS``.
    running, done, error : Out(1)
        Status: running since ``start``; stopped at ``HALT``; stopped on an error
        (raised once every instruction a client held has completed).
    cause : Out(ErrorCause)
        Why the run stopped with ``error``.
    error_pc : Out(32)
        Byte address of the offending instruction (for DEADLOCK: the earliest blocked one).
    config_regs : Out(CONFIG_REGS)
        The registers ``CONFIG`` writes, for the EPILOGUE/VECTOR units.
    busy : Out(UNIT_FLAGS)
        Per unit: its client holds an instruction.
    stall_dep : Out(range(len(QUEUED_UNITS) + 2))
        Units waiting for a dependency token this cycle, plus one while a barrier waits.
    stall_fetch : Out(1)
        The dispatcher has no instruction to dispatch this cycle.
    retired : Out(RETIRED)
        Pulses: an instruction of that opcode completed this cycle.
    scalar_regs : Out(SCALAR_FILE)
        The scalar registers (kept across runs; neither ``start`` nor ``soft_reset`` clears them).
    scalar_write : In(SCALAR_WRITE)
        Host write of a scalar register (``CSR`` ``SCALAR_R<i>``); meant for between runs.
    predicate_value : In(signed(32))
        The PREDICATE client's result, read with ``predicate_done``.
    predicate_done : In(1)
        The PREDICATE client's done, at the earliest the cycle after it took the instruction (it is
        not reported on ``compute.done``: a PREDICATE may run beside a MATMUL, see the module
        documentation).
    redirect : Out(1)
        Pulse: a BRANCH is taken; the fetch unit drops its words and restarts at ``redirect_pc``.
    redirect_pc : Out(PC_BITS)
        The taken BRANCH's target.
    """

    start: In(1)
    soft_reset: In(1)
    fetch: In(stream.Signature(FETCH_ENTRY))
    prog_base: In(PC_BITS)
    cycle_limit: In(CYCLE_BITS)
    run_cycles: Out(CYCLE_BITS)
    load: Out(EXECUTION_PORT)
    compute: Out(EXECUTION_PORT)
    store: Out(EXECUTION_PORT)
    counters: Out(EXECUTION_PORT)
    running: Out(1)
    done: Out(1)
    error: Out(1)
    cause: Out(ErrorCause)
    error_pc: Out(PC_BITS)
    config_regs: Out(CONFIG_REGS)
    busy: Out(UNIT_FLAGS)
    stall_dep: Out(range(len(QUEUED_UNITS) + 2))
    stall_fetch: Out(1)
    retired: Out(RETIRED)
    scalar_regs: Out(SCALAR_FILE)
    scalar_write: In(SCALAR_WRITE)
    predicate_value: In(signed(32))
    predicate_done: In(1)
    redirect: Out(1)
    redirect_pc: Out(PC_BITS)

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"Control needs a braze.isa.Config, not {config!r}")
        self.config = config
        super().__init__()
        if config.epilogue_overlap:
            # Not ports of the signature, so that a build without epilogue overlap is unchanged.
            #: In: the EPILOGUE client's done (an EPILOGUE beside the compute unit reports here only).
            self.epilogue_done = Signal(name="epilogue_done")
            #: Out: an EPILOGUE runs beside the compute unit (its done is not the compute client's).
            self.epilogue_beside = Signal(name="epilogue_beside")
        if config.redirect_stage:
            #: Out, with ``Config.redirect_stage``: a BRANCH executes in the slot this cycle, taken or not
            #: (the fetch unit's ``hold``: its redirect, if taken, comes a cycle later).
            self.branch_executes = Signal(name="branch_executes")

    def elaborate(self, platform):
        m = Module()
        core = Module()
        # Everything but `running` restarts on `start`, so a new run never sees an old one's state.
        clear = self.soft_reset | (self.start & ~self.running)
        m.submodules.core = ResetInserter(clear)(core)
        finished = self.done | self.error
        with m.If(self.soft_reset):
            m.d.sync += self.running.eq(0)
        with m.Elif(self.start & ~self.running):
            m.d.sync += self.running.eq(1)
        with m.Elif(finished):
            m.d.sync += self.running.eq(0)
        # The scalar registers, outside the core: a run starts with what the host and earlier runs left.
        scalar_write = Signal(SCALAR_WRITE, name="core_scalar_write")
        predicate_write = Signal(SCALAR_WRITE, name="core_predicate_write")
        self._elaborate_core(core, scalar_write, predicate_write)
        for index in range(1, SCALAR_REGS):
            with m.If(self.scalar_write.en & (self.scalar_write.index == index)):
                m.d.sync += self.scalar_regs[index].eq(self.scalar_write.value)
            with m.Elif(scalar_write.en & (scalar_write.index == index)):
                m.d.sync += self.scalar_regs[index].eq(scalar_write.value)
            # Never the same register as a SCALAR in the same cycle: that SCALAR waits in the slot.
            with m.Elif(predicate_write.en & (predicate_write.index == index)):
                m.d.sync += self.scalar_regs[index].eq(predicate_write.value)
        return m

    def _elaborate_core(self, m: Module, scalar_write, predicate_write):
        """The core, reset by ``start``; ``scalar_write`` and ``predicate_write`` (driven here) write a
        scalar register: a SCALAR's, a PREDICATE's result."""
        config = self.config
        ports = {Unit.LOAD: self.load, Unit.COMPUTE: self.compute, Unit.STORE: self.store}

        # --- Error latch: the first error wins; later ones are ignored. -------------------------
        stopping = Signal()                       # an error has occurred; start nothing new
        halted = Signal()

        # --- Watchdog: run cycles, and the cycle limit that stops dispatch and starts. ------------
        run_cycles = self.run_cycles
        expired = Signal()                        # run cycle L: nothing is dispatched or started
        m.d.comb += expired.eq((self.cycle_limit != 0) & (run_cycles >= self.cycle_limit))
        with m.If(self.running & ~stopping & ~halted & ~expired & (run_cycles != (1 << CYCLE_BITS) - 1)):
            m.d.sync += run_cycles.eq(run_cycles + 1)
        stopped = Signal()                        # start, dispatch and retire no instruction
        # With Config.redirect_stage a taken BRANCH is decided in the slot and acted on a cycle later, from
        # these registers: the fetch unit's redirect, or its error (see the dispatcher below).
        redirect_stage = bool(config.redirect_stage)
        redirect_pending = Signal(name="redirect_pending")
        branch_failed = Signal(name="branch_failed")
        if redirect_stage:
            # The cycle after a BRANCH failed is the one in which an error raised with it would stop
            # everything: nothing starts in it either.
            m.d.comb += stopped.eq(stopping | expired | branch_failed)
        else:
            m.d.comb += stopped.eq(stopping | expired)

        # --- Dependency tokens. -------------------------------------------------------------------
        tokens = {}
        for producer, consumer in zip(QUEUED_UNITS, QUEUED_UNITS[1:], strict=False):
            tokens[producer, consumer] = _TokenQueue(producer, consumer, config.token_depth)
            tokens[consumer, producer] = _TokenQueue(consumer, producer, config.token_depth)
        for token in tokens.values():
            token.elaborate_into(m)

        # --- Unit queues and the per-unit sequencers. ---------------------------------------------
        units = {}
        # With epilogue overlap a compute queue entry also holds a MATMUL's A end, a + (its A extent), for
        # the check whether it may start beside an EPILOGUE (no multiplier on that path).
        a_end_bits = 17 if config.epilogue_overlap else 0
        for position, unit in enumerate(QUEUED_UNITS):
            name = unit.name.lower()
            extra_bits = a_end_bits if unit is Unit.COMPUTE else 0
            fifo = SyncFIFO(width=QUEUE_ENTRY.size + extra_bits, depth=config.queue_depth)
            m.submodules[f"{name}_queue"] = fifo
            head = data.View(QUEUE_ENTRY, fifo.r_data[:QUEUE_ENTRY.size])
            head_a_end = fifo.r_data[QUEUE_ENTRY.size:] if extra_bits else None
            prev_unit = QUEUED_UNITS[position - 1] if position > 0 else None
            next_unit = QUEUED_UNITS[position + 1] if position + 1 < len(QUEUED_UNITS) else None
            # Which token queue each dependency flag names; a flag without a neighbour is
            # rejected by the decoder and never reaches a queue.
            flag_tokens = {
                "pop_prev": tokens.get((prev_unit, unit)),
                "pop_next": tokens.get((next_unit, unit)),
                "push_prev": tokens.get((unit, prev_unit)),
                "push_next": tokens.get((unit, next_unit)),
            }
            if unit is Unit.LOAD and config.load_overlap > 1:
                units[unit] = self._elaborate_overlapped_unit(m, unit, fifo, head, ports[unit], flag_tokens,
                                                              stopping, stopped, config.load_overlap)
            else:
                units[unit] = self._elaborate_unit(m, unit, fifo, head, ports[unit], flag_tokens, stopping,
                                                   stopped, head_a_end)

        # --- Dispatcher. ----------------------------------------------------------------------------
        # Words are decoded as they enter the dispatcher's one-word slot, so that dispatch and
        # fetch back-pressure depend on registered decode results only.
        m.submodules.decoder = decoder = Decoder(config, extent_input=True)
        slot_valid = Signal()
        slot = Signal(FETCH_ENTRY)
        slot_full = slot_valid          # the register; slot_valid is what the dispatcher sees of it
        if redirect_stage:
            # The word taken behind a BRANCH is dropped the cycle after, when the BRANCH turns out taken (or
            # failed): in that cycle it is not there.
            slot_valid = Signal(name="slot_live")
            m.d.comb += slot_valid.eq(slot_full & ~redirect_pending & ~branch_failed)
        slot_unit = Signal(Unit)
        slot_cause = Signal(ErrorCause)
        m.d.comb += [decoder.word.eq(self.fetch.payload.word),
                     decoder.a_extent_in.eq(self.fetch.payload.a_extent)]

        # Register offsets: a word that names a register is range-checked on its resolved fields,
        # with the registers as they are when it is in the slot (a second decoder).
        regs = Array(self.scalar_regs[index] for index in range(SCALAR_REGS))
        slot_names_register = Signal()
        resolved = _resolve_registers(m, slot.word, regs)
        stage = config.dispatch_stage
        # With two dispatch stages (Config.dispatch_stage=2) the slot only adds the register offsets:
        # the first stage, the *check stage*, holds the resolved word, registered, and range-checks it;
        # the add and the checks are then in different cycles.
        check_valid = Signal(name="check_valid")
        check_word = Signal(INSTRUCTION, name="check_word")
        check_pc = Signal(PC_BITS, name="check_pc")
        check_a_extent = Signal(A_EXTENT_BITS, name="check_a_extent")
        check_unit = Signal(Unit, name="check_unit")
        check_cause = Signal(ErrorCause, name="check_cause")        # decoded as the word entered the slot
        check_names_register = Signal(name="check_names_register")
        if stage == 2:
            checked_word, checked_a_extent = check_word, check_a_extent
            checked_cause, checked_names_register = check_cause, check_names_register
        else:
            checked_word, checked_a_extent = resolved, slot.a_extent
            checked_cause, checked_names_register = slot_cause, slot_names_register
        # A MATMUL's A extent does not depend on the registers: the fetch unit's (see FETCH_ENTRY).
        m.submodules.resolved_decoder = resolved_decoder = Decoder(config, extent_input=True)
        m.d.comb += [resolved_decoder.word.eq(checked_word),
                     resolved_decoder.a_extent_in.eq(checked_a_extent)]
        # The encoding checks come first (as ``decode`` before the range checks); a register field
        # above r7 is BAD_FIELD, whatever the resolved word would be.
        encoding_causes = (ErrorCause.ILLEGAL_OPCODE, ErrorCause.BAD_DEPS, ErrorCause.RESERVED_BITS,
                           ErrorCause.BAD_FIELD)
        encoding_error = Cat(*(checked_cause == cause for cause in encoding_causes)).any()
        # The cause of the word in the slot (in the check stage with two dispatch stages, where every
        # word's range checks are the resolved decoder's: the slot's decoder has no A extent then).
        if stage == 2:
            slot_cause_now = Mux(encoding_error, checked_cause, resolved_decoder.cause)
        else:
            slot_cause_now = Mux(checked_names_register & ~encoding_error, resolved_decoder.cause,
                                 checked_cause)
        # A PREDICATE has been dispatched and is not done: a word in the slot that names its register,
        # or is another PREDICATE, waits (docs/isa.md).
        predicate_pending = Signal()
        pending_dst = Signal(range(SCALAR_REGS))
        hold = Signal()
        # Decoded as the word enters the slot: the registers r1..r7 it names (bit r), so that the hold
        # is a lookup, not the comparisons of every register field with pending_dst.
        slot_names = Signal(SCALAR_REGS)
        m.d.comb += hold.eq(predicate_pending & (
            (slot.word.opcode == Opcode.PREDICATE) | slot_names.bit_select(pending_dst, 1)))

        # With Config.dispatch_stage, a load/compute/store word leaves the slot into the dispatch stage
        # with its resolved fields and its cause, whether legal or not, and the stage writes it into its
        # queue (or raises its error) a cycle later: what decides whether the slot takes the next word
        # then depends on registers only, not on the register-offset add and the range checks.
        stage_valid = Signal(name="stage_valid")
        stage_entry = Signal(QUEUE_ENTRY.size + a_end_bits, name="stage_entry")
        stage_unit = Signal(Unit, name="stage_unit")
        stage_cause = Signal(ErrorCause, name="stage_cause")
        stage_legal = Signal(name="stage_legal")          # stage_cause is NONE (registered as such)
        stage_pc = data.View(QUEUE_ENTRY, stage_entry[:QUEUE_ENTRY.size]).pc
        stage_failing = stage_valid & ~stage_legal
        drained = Cat(*((u["fifo"].level == 0) & u["idle"] for u in units.values())).all()
        if stage:
            drained = drained & ~stage_valid
        if stage == 2:
            drained = drained & ~check_valid
        slot_legal = slot_valid & ~slot.error & (slot_cause_now == ErrorCause.NONE) & ~hold
        # The same for a control word (SCALAR, BRANCH, a barrier; an illegal opcode is one too): it has no
        # register offset (slot_names_register is low), so its cause is the one decoded on entry.  Not
        # going through the resolved decoder keeps the register-offset add and its range checks off the
        # paths of the barriers (the counter snapshot, STALL_DEP) and of SCALAR and BRANCH.
        assert not any(FORMAT_BY_OPCODE[opcode].unit is Unit.CONTROL for opcode in REGISTER_OFFSETS)
        control_legal = slot_valid & ~slot.error & (slot_cause == ErrorCause.NONE) & ~hold
        is_control = slot_unit == Unit.CONTROL
        is_barrier = is_control & (slot.word.opcode != Opcode.SCALAR) & (slot.word.opcode != Opcode.BRANCH)
        at_barrier = control_legal & is_barrier & ~stopped
        barrier_go = at_barrier & drained

        # SCALAR and BRANCH execute in the slot, in the cycle they reach it (unless stopped or held).
        # Not beside an earlier word failing in the dispatch stage: a SCALAR must not write after it.
        executes = control_legal & is_control & ~is_barrier & ~stopped
        if stage:
            executes = executes & ~stage_failing
        if stage == 2:
            # Nor beside a word in the check stage: whether that one fails is known a cycle later.
            executes = executes & ~check_valid
        scalar_insn, branch_insn = slot.word.args.scalar, slot.word.args.branch
        executes_scalar = executes & (slot.word.opcode == Opcode.SCALAR)
        executes_branch = executes & (slot.word.opcode == Opcode.BRANCH)
        a_value, b_value = regs[branch_insn.a[:3]], regs[branch_insn.b[:3]]
        taken = Signal()
        with m.Switch(branch_insn.cond):
            with m.Case(BranchCond.ALWAYS):
                m.d.comb += taken.eq(1)
            with m.Case(BranchCond.EQ):
                m.d.comb += taken.eq(a_value == b_value)
            with m.Case(BranchCond.NE):
                m.d.comb += taken.eq(a_value != b_value)
            with m.Case(BranchCond.LT):
                m.d.comb += taken.eq(a_value < b_value)
            with m.Case(BranchCond.GE):
                m.d.comb += taken.eq(a_value >= b_value)
        # The target in more bits than a pc, so that one below address 0 compares below the base.
        target = Signal(signed(PC_BITS + 2))
        m.d.comb += target.eq(slot.pc + (branch_insn.offset * INSN_BYTES))
        below_base = target < self.prog_base
        if redirect_stage:
            # The BRANCH leaves the slot in the cycle it executes, taken or not, and whether it was taken
            # reaches the fetch unit (or the error latch) from registers a cycle later: the register
            # compare and the target check end at flip-flops, not in the fetch unit's restart.
            redirect_pc = Signal(PC_BITS, name="redirect_target")
            branch_pc = Signal(PC_BITS, name="branch_pc")
            m.d.sync += [redirect_pending.eq(executes_branch & taken & ~below_base),
                         branch_failed.eq(executes_branch & taken & below_base)]
            with m.If(executes_branch):
                m.d.sync += [redirect_pc.eq(target[:PC_BITS]), branch_pc.eq(slot.pc)]
            redirecting = redirect_pending
            m.d.comb += [self.redirect.eq(redirecting), self.redirect_pc.eq(redirect_pc),
                         self.branch_executes.eq(executes_branch)]
        else:
            branch_fails = executes_branch & taken & below_base
            redirecting = executes_branch & taken & ~below_base
            redirect_pc = target[:PC_BITS]
            m.d.comb += [self.redirect.eq(redirecting), self.redirect_pc.eq(redirect_pc)]
        with m.If(executes_scalar):
            m.d.comb += [
                scalar_write.en.eq(1),
                scalar_write.index.eq(scalar_insn.dst[:3]),
                scalar_write.value.eq(regs[scalar_insn.src1[:3]] + regs[scalar_insn.src2[:3]]
                                      + scalar_insn.imm),
            ]
        compute_unit = units[Unit.COMPUTE]
        with m.If(compute_unit["predicate_done"]):
            m.d.comb += [
                predicate_write.en.eq(1),
                predicate_write.index.eq(compute_unit["predicate_dst"]),
                predicate_write.value.eq(self.predicate_value),
            ]

        counters_state = Signal(_CountersState)
        slot_leaves = Signal()
        barrier_retire = {opcode: Signal(name=f"retire_{opcode.name.lower()}_barrier")
                          for opcode in (Opcode.FENCE, Opcode.COUNTERS, Opcode.HALT)}

        def queue_entry(unit: Unit) -> Value:
            entry = Cat(checked_word, check_pc if stage == 2 else slot.pc)
            if unit is Unit.COMPUTE and a_end_bits:
                # In range for a legal MATMUL: a + extent <= spad_rows <= 2**16.
                entry = Cat(entry, (checked_word.args.matmul.a + checked_a_extent)[:a_end_bits])
            return entry

        stage_leaves = Signal(name="stage_leaves")
        for unit, state in units.items():
            fifo = state["fifo"]
            if stage:
                width = QUEUE_ENTRY.size + (a_end_bits if unit is Unit.COMPUTE else 0)
                m.d.comb += [
                    fifo.w_data.eq(stage_entry[:width]),
                    fifo.w_en.eq(stage_valid & stage_legal & ~stopped & (stage_unit == unit)),
                ]
                with m.If(fifo.w_en & fifo.w_rdy):
                    m.d.comb += stage_leaves.eq(1)
            else:
                m.d.comb += [
                    fifo.w_data.eq(queue_entry(unit)),
                    fifo.w_en.eq(slot_legal & ~stopped & (slot_unit == unit)),
                ]
                with m.If(fifo.w_en & fifo.w_rdy):
                    m.d.comb += slot_leaves.eq(1)
        # The slot's load/compute/store word moves into the dispatch stage (see above).
        slot_moves = Signal(name="slot_moves")
        check_moves = Signal(name="check_moves")
        if stage == 1:
            m.d.comb += slot_moves.eq(slot_valid & ~slot.error & ~hold & ~stopped & ~is_control
                                      & (~stage_valid | stage_leaves))
            with m.If(slot_moves):
                m.d.comb += slot_leaves.eq(1)
                m.d.sync += [stage_valid.eq(1), stage_entry.eq(queue_entry(Unit.COMPUTE)),
                             stage_unit.eq(slot_unit), stage_cause.eq(slot_cause_now),
                             stage_legal.eq(slot_cause_now == ErrorCause.NONE)]
            with m.Elif(stage_leaves):
                m.d.sync += stage_valid.eq(0)
        elif stage == 2:
            # Slot -> check stage (the resolved word, registered) -> dispatch stage (with its cause).
            m.d.comb += check_moves.eq(check_valid & ~stopped & (~stage_valid | stage_leaves))
            with m.If(check_moves):
                m.d.sync += [stage_valid.eq(1), stage_entry.eq(queue_entry(Unit.COMPUTE)),
                             stage_unit.eq(check_unit), stage_cause.eq(slot_cause_now),
                             stage_legal.eq(slot_cause_now == ErrorCause.NONE)]
            with m.Elif(stage_leaves):
                m.d.sync += stage_valid.eq(0)
            m.d.comb += slot_moves.eq(slot_valid & ~slot.error & ~hold & ~stopped & ~is_control
                                      & (~check_valid | check_moves))
            with m.If(slot_moves):
                m.d.comb += slot_leaves.eq(1)
                # The A extent is computed here, not by the fetch unit (see Fetch).
                m.d.sync += [check_valid.eq(1), check_word.eq(resolved), check_pc.eq(slot.pc),
                             check_a_extent.eq(a_extent(config, slot.word)), check_unit.eq(slot_unit),
                             check_cause.eq(slot_cause), check_names_register.eq(slot_names_register)]
            with m.Elif(check_moves):
                m.d.sync += check_valid.eq(0)
        if redirect_stage:
            # A BRANCH always leaves; the word taken behind a taken one leaves (is dropped) a cycle later.
            with m.If(executes_scalar | executes_branch | redirect_pending):
                m.d.comb += slot_leaves.eq(1)
        else:
            with m.If(executes_scalar | (executes_branch & ~branch_fails)):
                m.d.comb += slot_leaves.eq(1)
        compute_fifo = units[Unit.COMPUTE]["fifo"]
        # From when the PREDICATE leaves the slot, later words that name its register wait there.
        predicate_leaves = slot_moves if stage else compute_fifo.w_en & compute_fifo.w_rdy
        with m.If(predicate_leaves & (slot.word.opcode == Opcode.PREDICATE)):
            m.d.sync += [predicate_pending.eq(1), pending_dst.eq(slot.word.args.predicate.dst[:3])]
        with m.Elif(compute_unit["predicate_done"]):
            m.d.sync += predicate_pending.eq(0)
        queue_full = Cat(*(u["fifo"].w_en & ~u["fifo"].w_rdy for u in units.values())).any()

        with m.If(barrier_go):
            with m.Switch(slot.word.opcode):
                with m.Case(Opcode.FENCE):
                    m.d.comb += [slot_leaves.eq(1), barrier_retire[Opcode.FENCE].eq(1)]
                with m.Case(Opcode.HALT):
                    m.d.comb += [slot_leaves.eq(1), barrier_retire[Opcode.HALT].eq(1)]
                    m.d.sync += halted.eq(1)
                with m.Case(Opcode.COUNTERS):
                    m.d.comb += self.counters.insn.valid.eq(counters_state == _CountersState.IDLE)
        m.d.comb += self.counters.insn.payload.eq(slot.word)
        with m.If(self.counters.insn.valid & self.counters.insn.ready):
            m.d.sync += counters_state.eq(_CountersState.EXECUTE)
        counters_done, counters_error, counters_cause = _client_report(m, "counters", self.counters)
        counters_finished = (counters_state == _CountersState.EXECUTE) & counters_done
        with m.If(counters_finished):
            m.d.sync += counters_state.eq(_CountersState.IDLE)
            with m.If(~counters_error):
                m.d.comb += [slot_leaves.eq(1), barrier_retire[Opcode.COUNTERS].eq(1)]

        # (condition, cause, pc), highest priority first.  Instructions the units hold were
        # dispatched before the word in the slot, so their errors come first.
        error_requests = [(u["failed"], u["cause"], u["pc"]) for u in units.values()]
        control_error = slot_valid & ~hold & ~slot.error & is_control & (slot_cause != ErrorCause.NONE)
        fetch_error = slot_valid & ~hold & slot.error
        if stage == 2:
            # The slot's errors wait for the check stage's word: it may fail, and it comes first.
            control_error = control_error & ~check_valid
            fetch_error = fetch_error & ~check_valid
        error_requests += [
            (counters_finished & counters_error, counters_cause, slot.pc),
            # The dispatch stage's word comes before the slot's.
            *([(stage_failing, stage_cause, stage_pc)] if stage else []),
            (fetch_error, ErrorCause.FETCH_ERROR, slot.pc),
            # With the dispatch stage, only a control word's error is raised in the slot (the cause
            # decoded on entry; a load/compute/store word's is raised in the stage, a cycle later).
            ((control_error, slot_cause, slot.pc) if stage else
             (slot_valid & ~hold & ~slot.error & (slot_cause_now != ErrorCause.NONE), slot_cause_now,
              slot.pc)),
            ((branch_failed, ErrorCause.BRANCH_RANGE, branch_pc) if redirect_stage else
             (branch_fails, ErrorCause.BRANCH_RANGE, slot.pc)),
        ]

        # Nothing after HALT is taken, not even into the slot.
        # Nor the word after a taken BRANCH: the fetch unit restarts at the target.
        m.d.comb += self.fetch.ready.eq(self.running & ~stopped & ~halted & ~barrier_retire[Opcode.HALT] &
                                        ~redirecting & (~slot_valid | slot_leaves))
        with m.If(self.fetch.valid & self.fetch.ready):
            m.d.sync += [
                slot_full.eq(1),
                slot.eq(self.fetch.payload),
                slot_unit.eq(decoder.unit),
                slot_cause.eq(decoder.cause),
                slot_names_register.eq(_names_register(self.fetch.payload.word)),
                slot_names.eq(Cat(0, *(_names_scalar_register(self.fetch.payload.word, register)
                                       for register in range(1, SCALAR_REGS)))),
            ]
        with m.Elif(slot_leaves):
            m.d.sync += slot_full.eq(0)
        # The pc of the word after the last one that entered the slot, or a taken branch's target
        # (the program base before any).
        fetched_any = Signal()
        following_pc = Signal(PC_BITS)
        with m.If(redirecting):
            m.d.sync += [fetched_any.eq(1), following_pc.eq(redirect_pc)]
        with m.Elif(self.fetch.valid & self.fetch.ready):
            m.d.sync += [fetched_any.eq(1), following_pc.eq(self.fetch.payload.pc + INSN_BYTES)]
        next_pc = Mux(fetched_any, following_pc, self.prog_base)
        if redirect_stage:
            # In the cycle after a taken BRANCH its target is the next word (the one behind it is dropped).
            next_pc = Mux(redirect_pending, redirect_pc, next_pc)

        # --- Deadlock: nothing can ever move again. -------------------------------------------------
        dispatcher_stuck = halted | queue_full | (at_barrier & ~drained) | (slot_valid & hold)
        if stage:
            dispatcher_stuck = dispatcher_stuck & ~stage_leaves
        if stage == 2:
            dispatcher_stuck = dispatcher_stuck & ~check_moves
        units_settled = Cat(*(u["stuck"] | u["empty"] for u in units.values())).all()
        any_stuck = Cat(*(u["stuck"] for u in units.values())).any()
        deadlock_now = (self.running & ~stopping & dispatcher_stuck & units_settled & any_stuck &
                        (counters_state == _CountersState.IDLE))
        deadlock_cycles = Signal(range(DEADLOCK_CYCLES + 1))
        with m.If(deadlock_now):
            m.d.sync += deadlock_cycles.eq(deadlock_cycles + 1)
        with m.Else():
            m.d.sync += deadlock_cycles.eq(0)
        # Report the earliest blocked instruction; 2**32 stands for "none yet".
        if config.fmax_registers:
            earliest_stuck_pc = self._registered_earliest_pc(m, units)
        else:
            earliest_stuck_pc = Const(1 << PC_BITS, PC_BITS + 1)
            for u in units.values():
                candidate = Mux(u["stuck"], u["pc"], 1 << PC_BITS)
                earliest_stuck_pc = Mux(candidate < earliest_stuck_pc, candidate, earliest_stuck_pc)
        error_requests.append((deadlock_now & (deadlock_cycles == DEADLOCK_CYCLES - 1), ErrorCause.DEADLOCK,
                               earliest_stuck_pc[:PC_BITS]))
        # Last: any other error of run cycle L wins over the watchdog.  A COUNTERS being executed has
        # left the dispatcher (see the module documentation).
        first_undispatched = Mux(slot_valid & (counters_state == _CountersState.IDLE), slot.pc, next_pc)
        if stage == 2:
            first_undispatched = Mux(check_valid, check_pc, first_undispatched)
        if stage:
            # A word in a dispatch stage is earlier than the slot's and not yet in its queue.
            first_undispatched = Mux(stage_valid, stage_pc, first_undispatched)
        error_requests.append((expired & self.running & ~halted, ErrorCause.WATCHDOG, first_undispatched))

        # --- Error latch and status. ----------------------------------------------------------------
        with m.If(~stopping):
            for index, (condition, cause, pc) in enumerate(error_requests):
                with (m.If if index == 0 else m.Elif)(condition):
                    m.d.sync += [stopping.eq(1), self.cause.eq(cause), self.error_pc.eq(pc)]
        in_flight = Cat(*(u["in_flight"] for u in units.values())).any() | \
            (counters_state != _CountersState.IDLE)
        m.d.comb += [
            self.error.eq(stopping & ~in_flight),
            self.done.eq(halted),
        ]

        # --- Statistics. ------------------------------------------------------------------------------
        m.d.comb += [
            self.stall_fetch.eq(self.running & ~stopping & ~halted & ~slot_valid),
            self.stall_dep.eq(sum(u["dep_stall"] for u in units.values()) + (at_barrier & ~drained)),
        ]
        for unit, u in units.items():
            m.d.comb += self.busy[unit.name.lower()].eq(u["busy"])
        for opcode in Opcode:
            if opcode in CONTROL_FLOW_OPCODES:
                continue
            pulses = [u["retire"] & (u["opcode"] == opcode) for u in units.values()]
            if opcode is Opcode.EPILOGUE and "epilogue_retire" in compute_unit:
                pulses.append(compute_unit["epilogue_retire"])
            if opcode is Opcode.MATMUL and "matmul_retire" in compute_unit:
                pulses.append(compute_unit["matmul_retire"])
            if opcode in barrier_retire:
                pulses.append(barrier_retire[opcode])
            m.d.comb += self.retired[opcode.name.lower()].eq(Cat(*pulses).any())

    @staticmethod
    def _registered_earliest_pc(m: Module, units: dict) -> Signal:
        """With ``Config.fmax_registers``: the earliest blocked instruction's pc for the DEADLOCK report
        (2**32 for none), two cycles late: each unit's candidate is registered, and so is their minimum,
        taken from comparisons side by side rather than in a chain.  The report comes in the
        :data:`DEADLOCK_CYCLES`-th cycle of the deadlock, in all of which nothing moves, so the pcs of two
        cycles before are the same -- and the queues' reads, the pc muxes and the comparisons are no longer
        one path into the error latch."""
        assert DEADLOCK_CYCLES >= 3     # the minimum is of pcs from two cycles before the report
        none = 1 << PC_BITS
        candidates = []
        for index, u in enumerate(units.values()):
            candidate = Signal(PC_BITS + 1, name=f"deadlock_candidate_{index}", init=none)
            m.d.sync += candidate.eq(Mux(u["stuck"], u["pc"], none))
            candidates.append(candidate)
        earliest = Signal(PC_BITS + 1, name="deadlock_earliest_pc", init=none)
        # A candidate no later than every other one is the minimum (the last one if no other is).
        value = candidates[-1]
        for candidate in reversed(candidates[:-1]):
            smallest = Cat(*(candidate <= other for other in candidates if other is not candidate)).all()
            value = Mux(smallest, candidate, value)
        m.d.sync += earliest.eq(value)
        return earliest

    def _elaborate_unit(self, m, unit, fifo, head, port, flag_tokens, stopping, stopped, head_a_end=None
                        ) -> dict:
        """The sequencer of one queued unit; returns the signals the rest of the core reads.

        ``stopping``: an error was raised (pending pushes are dropped); ``stopped``: that, or the
        watchdog's limit is reached (nothing new starts).  ``head_a_end``: with epilogue overlap, the
        compute queue head's A end (read as a MATMUL).
        """
        name = unit.name.lower()
        state = Signal(_UnitState, name=f"{name}_state")
        offering = Signal(name=f"{name}_offering")     # insn.valid was up without a transfer
        current_pc = Signal(PC_BITS, name=f"{name}_pc")
        current_opcode = Signal(Shape.cast(Opcode), name=f"{name}_opcode")  # Opcode has no 0
        current_deps = Signal(INSTRUCTION["deps"].shape, name=f"{name}_deps")
        retire = Signal(name=f"{name}_retire")

        head_deps = head.word.deps
        tokens_ready, push_room = _token_checks(m, name, head_deps, current_deps, flag_tokens)

        internal = (head.word.opcode == Opcode.CONFIG) if unit is Unit.COMPUTE else Const(0)
        # A PREDICATE running beside the compute unit (see the module documentation): ``beside``
        # while it runs; the next instruction may start then only if it is a MATMUL, and retires
        # once it is done.
        beside = Signal(name=f"{name}_predicate_beside")
        beside_clear = Const(1)
        head_beside = head_predicate_beside = Const(0)
        lane_open = Const(1)
        if unit is Unit.COMPUTE:
            head_predicate = head.word.args.predicate
            head_beside = head_predicate_beside = (
                (head.word.opcode == Opcode.PREDICATE) & (head_predicate.mem == Memory.SPAD) &
                ~head_deps.push_prev & ~head_deps.push_next)
            beside_clear = ~beside | self.predicate_done
            lane_open = ~beside | (head.word.opcode == Opcode.MATMUL)
        predicate_clear = beside_clear
        # With Config.matmul_overlap: the matmul lane holds the earlier of two MATMULs in flight.
        lane = self._matmul_lane_signals() if unit is Unit.COMPUTE and self.config.matmul_overlap else None
        epilogue = None
        if unit is Unit.COMPUTE and self.config.epilogue_overlap:
            # An EPILOGUE beside the unit that follows the lane's MATMUL retires after it.
            epilogue = self._epilogue_lane(m, head, head_a_end, flag_tokens, stopping,
                                           None if lane is None else lane["older"] & lane["before_epilogue"])
            head_beside = head_beside | epilogue["head_beside"]
            # The next instruction retires only once the EPILOGUE beside it has retired (pushed).
            beside_clear = beside_clear & ~epilogue["beside"]
            epilogue_open = ~epilogue["beside"] | epilogue["head_clear"]
            if lane is not None:
                # A MATMUL that touches its rows waits only until it has completed, not until it retired.
                epilogue_open = epilogue_open | (~epilogue["running"] & (head.word.opcode == Opcode.MATMUL))
            lane_open = lane_open & epilogue_open
        free_state = state == _UnitState.IDLE
        if lane is not None:
            # A MATMUL (or, with epilogue overlap, an EPILOGUE beside the unit that is clear of its rows)
            # handed over while a MATMUL still executes or waits to push: that one moves to the lane and
            # retires from there.  While the lane's MATMUL has not retired, only a MATMUL starts from IDLE.
            running_matmul = (((state == _UnitState.EXECUTE) | (state == _UnitState.PUSH))
                              & (current_opcode == Opcode.MATMUL) & lane["free"])
            follows = head.word.opcode == Opcode.MATMUL
            if epilogue is not None:
                started_signal = Signal(name=f"{name}_started")
                clear = self._current_matmul_clear(m, head, head_a_end, started_signal)
                follows = follows | (epilogue["head_beside"] & ~beside & clear)
            free_state = ((free_state & (~lane["older"] | (head.word.opcode == Opcode.MATMUL)))
                          | (running_matmul & follows))
        can_start = free_state & ~offering & fifo.r_rdy & tokens_ready & ~stopped & lane_open
        m.d.comb += [
            port.insn.valid.eq((can_start & ~internal) | offering),
            port.insn.payload.eq(head.word),
        ]
        handed_over = port.insn.valid & port.insn.ready
        m.d.sync += offering.eq(port.insn.valid & ~port.insn.ready)
        started = handed_over | (can_start & internal)
        if lane is not None and epilogue is not None:
            m.d.comb += started_signal.eq(started)

        with m.If(started):
            m.d.comb += fifo.r_en.eq(1)
            for flag in ("pop_prev", "pop_next"):
                if flag_tokens[flag] is not None:
                    m.d.comb += flag_tokens[flag].pop.eq(head_deps[flag])
            m.d.sync += [
                current_pc.eq(head.pc),
                current_opcode.eq(head.word.opcode),
                current_deps.eq(head_deps),
                state.eq(Mux(internal, _UnitState.PUSH,
                             Mux(head_beside, _UnitState.IDLE, _UnitState.EXECUTE))),
            ]
        if unit is Unit.COMPUTE:
            with m.If(started & head_predicate_beside):
                m.d.sync += beside.eq(1)
            with m.Elif(self.predicate_done):
                m.d.sync += beside.eq(0)
        if unit is Unit.COMPUTE:
            with m.If(started & internal):
                config_insn = head.word.args.config
                with m.Switch(config_insn.reg):
                    for reg in ConfigReg:
                        with m.Case(reg):
                            m.d.sync += self.config_regs[reg.name.lower()].eq(config_insn.value)

        takes_own_done = None
        if lane is not None:     # a done in a take cycle is the lane's MATMUL's while it is in flight
            takes_own_done = (state == _UnitState.IDLE) & ~(lane["older"] & ~lane["done"])
        client_done, client_error, client_cause = _client_report(m, name, port, takes_own_done)
        executing = state == _UnitState.EXECUTE
        if unit is Unit.COMPUTE:
            # A PREDICATE that does not run beside the unit completes with the client's predicate_done.
            client_done = client_done | (self.predicate_done & (current_opcode == Opcode.PREDICATE))
        moving = Const(0)
        retire_clear = push_room & beside_clear
        if lane is not None:
            # While the lane's MATMUL is in flight the client's done is its (dones come in order), and the
            # current instruction retires only after it.
            moving = started & (state != _UnitState.IDLE)
            lane_in_flight = lane["older"] & ~lane["done"]
            # An EPILOGUE beside the unit that came after the lane's MATMUL does not hold it back.
            lane_clear = beside_clear if epilogue is None else Mux(lane["before_epilogue"], predicate_clear,
                                                                   beside_clear)
            self._matmul_lane(m, lane, client_done & lane_in_flight, flag_tokens, lane_clear, stopping)
            with m.If(moving):
                m.d.sync += [
                    lane["older"].eq(1), lane["pc"].eq(current_pc), lane["deps"].eq(current_deps),
                    lane["done"].eq((executing & client_done & ~lane_in_flight) | (state == _UnitState.PUSH)),
                    lane["before_epilogue"].eq(head.word.opcode == Opcode.EPILOGUE),
                ]
            client_done = client_done & ~lane_in_flight & ~moving
            retire_clear = retire_clear & ~lane["older"]
        failed = executing & client_done & client_error
        completing = (executing & client_done & ~client_error) | (state == _UnitState.PUSH)
        if lane is not None:
            completing = completing & ~moving
        with m.If(failed):
            m.d.sync += state.eq(_UnitState.IDLE)
        with m.If(completing):
            # After an error, pending pushes are dropped: nothing will pop them.
            with m.If(retire_clear | stopping):
                m.d.comb += retire.eq(1)
                m.d.sync += state.eq(_UnitState.IDLE)
                with m.If(~stopping):
                    for flag in ("push_prev", "push_next"):
                        if flag_tokens[flag] is not None:
                            m.d.comb += flag_tokens[flag].push.eq(current_deps[flag])
            with m.Else():
                m.d.sync += state.eq(_UnitState.PUSH)

        # PREDICATE: its register and the cycle its result comes (the control core writes it then).
        predicate_dst = Signal(range(SCALAR_REGS), name=f"{name}_predicate_dst")
        predicate_done = Signal(name=f"{name}_predicate_done")
        if unit is Unit.COMPUTE:
            with m.If(started & (head.word.opcode == Opcode.PREDICATE)):
                m.d.sync += predicate_dst.eq(head.word.args.predicate.dst[:3])
            m.d.comb += predicate_done.eq(self.predicate_done)

        waiting_pop = (state == _UnitState.IDLE) & ~offering & fifo.r_rdy & ~tokens_ready
        waiting_push = (state == _UnitState.PUSH) & ~push_room
        idle = (state == _UnitState.IDLE) & ~offering & ~beside
        in_flight = (~((state == _UnitState.IDLE) & ~offering) & (state != _UnitState.PUSH)) | beside
        stuck = waiting_pop | waiting_push
        dep_stall = (waiting_pop | waiting_push) & ~stopping
        pc = Mux(waiting_pop, head.pc, current_pc)
        extra = {}
        if epilogue is not None:
            # While the EPILOGUE beside runs the unit is not stuck: its tokens are still to come (a
            # deadlock report then would be false).  Once it waits for room to push it is, unless the
            # instruction beside it still runs.
            blocked = epilogue["waiting_push"]
            idle = idle & ~epilogue["beside"]
            in_flight = in_flight | epilogue["beside"]
            stuck = ((stuck & ~epilogue["running"])
                     | (blocked & (state != _UnitState.EXECUTE) & ~offering))
            dep_stall = dep_stall | (blocked & ~stopping)
            pc = Mux(blocked, epilogue["pc"], pc)      # the earliest of the unit's instructions
            extra["epilogue_retire"] = epilogue["retire"]
        if lane is not None:
            # While the lane's MATMUL is in flight the unit is not stuck; once it waits for room to push
            # it is, unless the current instruction still executes.  Its pc is the earlier one.
            blocked = lane["blocked"]
            idle = idle & ~lane["older"]
            in_flight = in_flight | (lane["older"] & ~lane["done"])
            stuck = (stuck & ~lane["older"]) | (blocked & (state != _UnitState.EXECUTE) & ~offering)
            dep_stall = dep_stall | (blocked & ~stopping)
            pc = Mux(blocked, lane["pc"], pc)
            extra["matmul_retire"] = lane["retire"]
        return {
            **extra,
            "predicate_dst": predicate_dst,
            "predicate_done": predicate_done,
            "fifo": fifo,
            # Offered to or held by the client (not yet done).
            "in_flight": in_flight,
            "busy": state == _UnitState.EXECUTE,
            "idle": idle,
            "empty": idle & ~fifo.r_rdy,
            "stuck": stuck,
            "dep_stall": dep_stall,
            # The pc of the instruction that failed or is blocked.
            "pc": pc,
            "failed": failed,
            "cause": client_cause,
            "retire": retire,
            "opcode": current_opcode,
        }

    @staticmethod
    def _matmul_lane_signals() -> dict:
        """With ``Config.matmul_overlap``: the registers of the compute unit's matmul lane, which holds
        the earlier of two MATMULs in flight (see :meth:`_matmul_lane`)."""
        return {"older": Signal(name="matmul_lane_older"), "done": Signal(name="matmul_lane_done"),
                "pc": Signal(PC_BITS, name="matmul_lane_pc"),
                "deps": Signal(INSTRUCTION["deps"].shape, name="matmul_lane_deps"),
                "free": Signal(name="matmul_lane_free"), "retire": Signal(name="matmul_lane_retire"),
                "blocked": Signal(name="matmul_lane_blocked"),
                # It moved here when an EPILOGUE beside the unit was handed over: that one comes after it.
                "before_epilogue": Signal(name="matmul_lane_before_epilogue")}

    @staticmethod
    def _current_matmul_clear(m, head, head_a_end, started) -> Signal:
        """With ``Config.matmul_overlap`` and ``epilogue_overlap``: the head word, read as an EPILOGUE, is
        clear of the rows of the MATMUL the unit executes (latched when it starts) -- the rule of
        :func:`braze.isa.timing.matmul_clear_of_epilogue`, so that the EPILOGUE may run beside it."""
        matmul = head.word.args.matmul
        acc, acc_end = Signal(17, name="current_matmul_acc"), Signal(17, name="current_matmul_acc_end")
        a, a_end = Signal(17, name="current_matmul_a"), Signal(17, name="current_matmul_a_end")
        b, b_end = Signal(17, name="current_matmul_b"), Signal(17, name="current_matmul_b_end")
        with m.If(started & (head.word.opcode == Opcode.MATMUL)):
            m.d.sync += [acc.eq(matmul.acc), acc_end.eq(matmul.acc + matmul.m), a.eq(matmul.a),
                         a_end.eq(head_a_end), b.eq(matmul.b), b_end.eq(matmul.b + matmul.k)]

        def disjoint(first, first_end, second, second_end):
            return (first_end <= second) | (second_end <= first)

        ep = head.word.args.epilogue
        dst_end = ep.dst + ep.m
        clear = Signal(name="epilogue_clear_of_current_matmul")
        m.d.comb += clear.eq(
            disjoint(acc, acc_end, ep.src, ep.src + ep.m)
            & (~ep.bias | disjoint(acc, acc_end, ep.bias_addr, ep.bias_addr + 1))
            & (~ep.requant | disjoint(acc, acc_end, ep.quant_addr, ep.quant_addr + 2))
            & disjoint(a, a_end, ep.dst, dst_end)
            & disjoint(b, b_end, ep.dst, dst_end))
        return clear

    @staticmethod
    def _matmul_lane(m, lane, its_done, flag_tokens, beside_clear, stopping) -> None:
        """With ``Config.matmul_overlap`` (docs/isa.md): the earlier of two MATMULs in flight.

        The caller moves the executing MATMUL here when it hands the next MATMUL over (``older``, with
        ``done`` if it has completed already).  It completes with ``its_done`` and then retires --
        pushes its tokens -- as the unit's instructions do: once they have room and no instruction
        beside the unit is still to retire.  The unit hands over no third MATMUL before it retires
        (``free``, in its retire cycle at the earliest), and the current one retires after it.
        """
        finished = lane["older"] & (lane["done"] | its_done)
        room = Cat(~lane["deps"][flag] | flag_tokens[flag].room
                   for flag in ("push_prev", "push_next") if flag_tokens[flag] is not None).all()
        m.d.comb += [
            lane["retire"].eq(finished & ((room & beside_clear) | stopping)),
            lane["free"].eq(~lane["older"] | lane["retire"]),
            lane["blocked"].eq(finished & ~room),
        ]
        with m.If(lane["retire"]):
            m.d.sync += [lane["older"].eq(0), lane["done"].eq(0)]
            # After an error, pending pushes are dropped: nothing will pop them.
            with m.If(~stopping):
                for flag in ("push_prev", "push_next"):
                    if flag_tokens[flag] is not None:
                        m.d.comb += flag_tokens[flag].push.eq(lane["deps"][flag])
        with m.Elif(its_done):
            m.d.sync += lane["done"].eq(1)

    def _epilogue_lane(self, m, head, head_a_end, flag_tokens, stopping, earlier_matmul=None) -> dict:
        """With ``Config.epilogue_overlap``: an EPILOGUE beside the compute unit (docs/isa.md).

        An EPILOGUE that writes scratchpad rows without a residual
        (:func:`braze.isa.timing.epilogue_runs_beside`) is handed to its client like any compute
        instruction, and the unit is free in the next cycle; ``beside`` is high until it has completed
        (``epilogue_done``) and pushed its tokens.  Meanwhile only a MATMUL clear of its rows
        (``head_clear``: :func:`braze.isa.timing.matmul_clear_of_epilogue`) may start, and no later
        instruction retires.  The caller hands the EPILOGUE over; this latches it and retires it.
        ``earlier_matmul`` (with ``Config.matmul_overlap``): a MATMUL before it in program order has not
        retired yet, so it may not either.
        """
        beside = self.epilogue_beside
        completed = Signal(name="epilogue_beside_completed")
        deps = Signal(INSTRUCTION["deps"].shape, name="epilogue_beside_deps")
        pc = Signal(PC_BITS, name="epilogue_beside_pc")
        # The rows it reads from the accumulator and writes in the scratchpad, as [first, end) ranges.
        src, src_end = Signal(17, name="epilogue_src"), Signal(17, name="epilogue_src_end")
        dst, dst_end = Signal(17, name="epilogue_dst"), Signal(17, name="epilogue_dst_end")
        bias, bias_addr = Signal(name="epilogue_bias"), Signal(17, name="epilogue_bias_addr")
        requant, quant_addr = Signal(name="epilogue_requant"), Signal(17, name="epilogue_quant_addr")

        args = head.word.args.epilogue
        head_beside = ((head.word.opcode == Opcode.EPILOGUE) & (args.out == Memory.SPAD) & ~args.residual)
        # Handed over: the caller's start condition and the client's ready, as for any instruction.
        taken = self.compute.insn.valid & self.compute.insn.ready & head_beside
        with m.If(taken):
            m.d.sync += [
                beside.eq(1), deps.eq(head.word.deps), pc.eq(head.pc),
                src.eq(args.src), src_end.eq(args.src + args.m),
                dst.eq(args.dst), dst_end.eq(args.dst + args.m),
                bias.eq(args.bias), bias_addr.eq(args.bias_addr),
                requant.eq(args.requant), quant_addr.eq(args.quant_addr),
            ]

        def disjoint(first, first_end, second, second_end):
            return (first_end <= second) | (second_end <= first)

        matmul = head.word.args.matmul
        acc, acc_end = matmul.acc, matmul.acc + matmul.m
        head_clear = Signal(name="epilogue_head_clear")
        m.d.comb += head_clear.eq(
            (head.word.opcode == Opcode.MATMUL)
            & disjoint(acc, acc_end, src, src_end)
            & (~bias | disjoint(acc, acc_end, bias_addr, bias_addr + 1))
            & (~requant | disjoint(acc, acc_end, quant_addr, quant_addr + 2))
            & disjoint(matmul.a, head_a_end, dst, dst_end)
            & disjoint(matmul.b, matmul.b + matmul.k, dst, dst_end))

        finishing = beside & (self.epilogue_done | completed)
        room = Cat(~deps[flag] | flag_tokens[flag].room
                   for flag in ("push_prev", "push_next") if flag_tokens[flag] is not None).all()
        retire = Signal(name="epilogue_beside_retire")
        after = room if earlier_matmul is None else room & ~earlier_matmul
        m.d.comb += retire.eq(finishing & (after | stopping))
        with m.If(retire):
            m.d.sync += [beside.eq(0), completed.eq(0)]
            # After an error, pending pushes are dropped: nothing will pop them.
            with m.If(~stopping):
                for flag in ("push_prev", "push_next"):
                    if flag_tokens[flag] is not None:
                        m.d.comb += flag_tokens[flag].push.eq(deps[flag])
        with m.Elif(finishing):
            m.d.sync += completed.eq(1)
        return {"beside": beside, "head_beside": head_beside, "head_clear": head_clear, "retire": retire,
                "running": beside & ~finishing, "waiting_push": finishing & ~room, "pc": pc}

    def _elaborate_overlapped_unit(self, m, unit, fifo, head, port, flag_tokens, stopping, stopped,
                                   depth: int) -> dict:
        """:meth:`_elaborate_unit` for a client that holds up to ``depth`` instructions at once.

        The load unit with ``Config.load_overlap`` > 1: the next LOAD is offered while earlier ones
        execute (the client takes it when it can), their done reports come in program order, and
        each retires -- pushes its tokens -- in program order once done.  The instructions held are
        kept in a ring, oldest first; the first ``completed`` of them are done and wait to retire.
        The client must not report done in the cycle it takes an instruction (the load engine's
        ``done`` comes from registered state).
        """
        name = unit.name.lower()
        index_bits = exact_log2(depth)
        pcs = Array(Signal(PC_BITS, name=f"{name}_pc{i}") for i in range(depth))
        deps = Array(Signal(INSTRUCTION["deps"].shape, name=f"{name}_deps{i}") for i in range(depth))
        failed_ring = Array(Signal(name=f"{name}_failed{i}") for i in range(depth))
        oldest = Signal(index_bits, name=f"{name}_oldest")
        held = Signal(range(depth + 1), name=f"{name}_held")
        completed = Signal(range(depth + 1), name=f"{name}_completed")
        offering = Signal(name=f"{name}_offering")
        retire = Signal(name=f"{name}_retire")
        oldest_deps = deps[oldest]

        head_deps = head.word.deps
        tokens_ready, push_room = _token_checks(m, name, head_deps, oldest_deps, flag_tokens)

        can_start = ~offering & (held != depth) & fifo.r_rdy & tokens_ready & ~stopped
        m.d.comb += [
            port.insn.valid.eq(can_start | offering),
            port.insn.payload.eq(head.word),
        ]
        started = port.insn.valid & port.insn.ready
        m.d.sync += offering.eq(port.insn.valid & ~port.insn.ready)
        newest = (oldest + held)[:index_bits]
        with m.If(started):
            m.d.comb += fifo.r_en.eq(1)
            for flag in ("pop_prev", "pop_next"):
                if flag_tokens[flag] is not None:
                    m.d.comb += flag_tokens[flag].pop.eq(head_deps[flag])
            m.d.sync += [pcs[newest].eq(head.pc), deps[newest].eq(head_deps), failed_ring[newest].eq(0)]

        # Done reports come in program order: each one is the oldest instruction not yet completed.
        reporting = (oldest + completed)[:index_bits]
        client_done = port.done & (held != completed)
        failed = client_done & port.error
        with m.If(failed):
            m.d.sync += failed_ring[reporting].eq(1)

        # Retire the oldest completed instruction once its pushes have room (after an error, pushes
        # are dropped; a failed instruction retires without counting).
        leaving = (completed != 0) & (push_room | stopping)
        with m.If(leaving):
            m.d.sync += oldest.eq(oldest + 1)
            m.d.comb += retire.eq(~failed_ring[oldest])
            with m.If(~stopping & ~failed_ring[oldest]):
                for flag in ("push_prev", "push_next"):
                    if flag_tokens[flag] is not None:
                        m.d.comb += flag_tokens[flag].push.eq(oldest_deps[flag])
        m.d.sync += [held.eq(held + started - leaving), completed.eq(completed + client_done - leaving)]

        executing = held != completed
        waiting_pop = ~offering & (held != depth) & fifo.r_rdy & ~tokens_ready
        waiting_push = (completed != 0) & ~push_room
        stuck = ~executing & (waiting_pop | waiting_push)
        return {
            "fifo": fifo,
            "in_flight": executing | offering,
            "busy": executing,
            "idle": (held == 0) & ~offering,
            "empty": (held == 0) & ~offering & ~fifo.r_rdy,
            "stuck": stuck,
            "dep_stall": (waiting_pop | waiting_push) & ~stopping,
            # The pc of the instruction that failed or is blocked (the oldest one first).
            "pc": Mux(failed, pcs[reporting], Mux(waiting_push, pcs[oldest], head.pc)),
            "failed": failed,
            "cause": port.cause,
            "retire": retire,
            "opcode": Const(Opcode.LOAD.value, Shape.cast(Opcode)),
        }
