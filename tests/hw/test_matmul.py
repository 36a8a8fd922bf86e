# amaranth: UnusedElaboratable=no
"""The MATMUL unit with real banked memories: results vs numpy, exact cycles, counter pulses."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from braze.hw.matmul import MATMUL_LATENCY, MatmulUnit
from braze.hw.memories import BankedMemory
from braze.isa import Config, Instruction
from braze.isa.arith import wrap32

# Rows of each memory the tests fill with random data and place their operands in.
SPAD_WINDOW = 160
ACC_WINDOW = 48


class MatmulSystem(wiring.Component):
    """The unit wired to a scratchpad and an accumulator, as in the accelerator."""

    def __init__(self, config: Config):
        self.unit = MatmulUnit(config)
        self.spad = BankedMemory(shape=data.ArrayLayout(signed(8), config.cols),
                                 depth=config.spad_rows, banks=config.spad_banks,
                                 weight_read=bool(config.weight_preload))
        self.acc = BankedMemory(shape=data.ArrayLayout(signed(32), config.cols),
                                depth=config.acc_rows, banks=config.acc_banks)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = self.unit
        m.submodules.spad = self.spad
        m.submodules.acc = self.acc
        wiring.connect(m, self.unit.spad_read, self.spad.compute_read)
        if self.unit.config.weight_preload:
            wiring.connect(m, self.unit.weight_read, self.spad.weight_read)
        wiring.connect(m, self.unit.acc_read, self.acc.compute_read)
        wiring.connect(m, self.unit.acc_write, self.acc.compute_write)
        return m


def _contract_cycles(config, m, k):
    """The timing contract, written out here rather than imported from the unit."""
    chunks = -(-k // config.rows)
    if config.weight_preload:
        # Only chunk 0's preload is exposed; chunk c+1 streams max(m, rows+1) cycles after chunk c.
        return (config.rows + (chunks - 1) * max(m, config.rows + 1) + m
                + config.rows + config.cols + MATMUL_LATENCY)
    return chunks * (config.rows + m) + config.rows + config.cols + MATMUL_LATENCY


def _reference(spad, acc, insn, rows):
    """MATMUL on numpy copies of the memories, following the layout in the ISA document."""
    m, n, k = insn.m, insn.n, insn.k
    a_matrix = np.zeros((m, k), dtype=np.int64)
    for kk in range(k):
        chunk, r = divmod(kk, rows)
        a_matrix[:, kk] = spad[insn.a + chunk * insn.a_stride: insn.a + chunk * insn.a_stride + m, r]
    b_matrix = spad[insn.b: insn.b + k, :n].astype(np.int64)
    old = acc[insn.acc: insn.acc + m, :n].astype(np.int64) if insn.accumulate else 0
    acc[insn.acc: insn.acc + m, :n] = wrap32(old + a_matrix @ b_matrix)


def _random_matmul(rng, config, m, k, n, accumulate):
    rows = config.rows
    chunks = -(-k // rows)
    a_stride = int(rng.choice([m + 1, m + 3, max(m - 1, 0), 2 * m + 1]))
    a_span = (chunks - 1) * a_stride + m
    return Instruction.make(
        "matmul", m=m, n=n, k=k, accumulate=accumulate, a_stride=a_stride,
        a=int(rng.integers(0, SPAD_WINDOW - a_span + 1)),
        b=int(rng.integers(0, SPAD_WINDOW - k + 1)),
        acc=int(rng.integers(0, ACC_WINDOW - m + 1)),
    )


def _run(config, program, rng, *, gaps):
    """Execute `program` back to back (or with idle gaps) and check each instruction."""
    system = MatmulSystem(config)
    unit = system.unit
    cols = config.cols
    spad = rng.integers(-128, 128, size=(SPAD_WINDOW, cols))
    # Extreme operands in part of the window: -128 * -128 sums.
    spad[: SPAD_WINDOW // 4] = -128
    acc = rng.integers(-(1 << 31), 1 << 31, size=(ACC_WINDOW, cols)).astype(np.int64)
    # Accumulator rows near the int32 limits, so that accumulating wraps.
    acc[: ACC_WINDOW // 2] = rng.choice(np.array([(1 << 31) - 1, -(1 << 31), (1 << 31) - 5000]),
                                        size=(ACC_WINDOW // 2, cols))
    model_acc = acc.copy()
    results = []

    async def testbench(ctx):
        for row in range(SPAD_WINDOW):
            ctx.set(system.spad.storage_row(row), [int(x) for x in spad[row]])
        for row in range(ACC_WINDOW):
            ctx.set(system.acc.storage_row(row), [int(x) for x in acc[row]])

        cycle = 0
        pending = list(program)
        current = None              # (instruction, accept cycle, pulse sums)
        while pending or current is not None:
            offer = bool(pending) and not (gaps and cycle % 7 < 3)
            ctx.set(unit.insn.valid, offer)
            if offer:
                ctx.set(unit.insn.payload.as_value(), pending[0].encode())

            if current is not None:
                sums = current[2]
                sums["busy"] += ctx.get(unit.busy)
                spad_reads = ctx.get(unit.spad_read_pulse)
                if config.weight_preload:
                    spad_reads += ctx.get(unit.weight_read_pulse)
                sums["spad_reads"] += spad_reads
                sums["acc_reads"] += ctx.get(unit.acc_read_pulse)
                sums["acc_writes"] += ctx.get(unit.acc_write_pulse)
                sums["macs"] += ctx.get(unit.macs)
                # The pulses mirror the memories' own access counts.
                assert ctx.get(system.spad.reads) == spad_reads
                assert ctx.get(system.acc.reads) == ctx.get(unit.acc_read_pulse)
                assert ctx.get(system.acc.writes) == ctx.get(unit.acc_write_pulse)
                assert ctx.get(system.spad.writes) == 0
                if ctx.get(unit.done):
                    insn, accepted, sums = current
                    _reference(spad, model_acc, insn, config.rows)
                    state = np.array([list(ctx.get(system.acc.storage_row(row)))
                                      for row in range(ACC_WINDOW)])
                    results.append((insn, cycle - accepted, sums, state, model_acc.copy()))
                    current = None
            else:
                assert not ctx.get(unit.done) and not ctx.get(unit.busy)

            if offer and ctx.get(unit.insn.ready):
                assert current is None, "accepted an instruction while busy"
                current = (pending.pop(0), cycle, dict.fromkeys(
                    ("busy", "spad_reads", "acc_reads", "acc_writes", "macs"), 0))
            await ctx.tick()
            cycle += 1
            assert cycle < 100_000

    sim = Simulator(system)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()

    assert [insn for insn, *_ in results] == program
    for insn, cycles, sums, state, expected in results:
        chunks = -(-insn.k // config.rows)
        where = f"{insn!r}"
        assert cycles == _contract_cycles(config, insn.m, insn.k), where
        assert sums["busy"] == cycles, where
        assert sums["macs"] == insn.m * insn.n * insn.k, where
        assert sums["spad_reads"] == chunks * insn.m + insn.k, where
        assert sums["acc_reads"] == insn.m * (chunks if insn.accumulate else chunks - 1), where
        assert sums["acc_writes"] == insn.m * chunks, where
        np.testing.assert_array_equal(state, expected, err_msg=where)


TINY_PRELOAD = Config.parse("tiny:weight_preload=1")


@pytest.mark.parametrize(("config", "seed"), [(Config.preset("tiny"), 11), (TINY_PRELOAD, 21)],
                         ids=["tiny", "tiny_preload"])
def test_tiny_random_shapes_back_to_back(config, seed):
    rng = np.random.default_rng(seed)
    program = []
    # m below, at, one above (with preload the chunk period is max(m, rows + 1)) and well above rows;
    # k below, at, above and not a multiple of rows; n below cols.
    for m, k, n in [(1, 1, 1), (3, 4, 4), (4, 3, 2), (6, 5, 3), (9, 11, 4), (2, 8, 1), (5, 13, 4),
                    (7, 7, 2), (4, 4, 4), (1, 9, 3), (5, 8, 3), (4, 9, 4), (1, 13, 4), (7, 16, 2)]:
        for accumulate in (False, True):
            program.append(_random_matmul(rng, config, m, k, n, accumulate))
    rng.shuffle(program)
    _run(config, program, rng, gaps=False)


@pytest.mark.parametrize(("config", "seed", "first_mk", "last_mk"),
                         [(Config.preset("tiny"), 12, (5, 6), (2, 2)), (TINY_PRELOAD, 22, (2, 12), (1, 7))],
                         ids=["tiny", "tiny_preload"])
def test_tiny_with_idle_gaps_and_repeated_accumulation(config, seed, first_mk, last_mk):
    rng = np.random.default_rng(seed)
    first = _random_matmul(rng, config, *first_mk, 3, False)
    # The same accumulator rows again: C += A x B on top of the previous result.
    again = first.replace(accumulate=True, b=(first.b + 1) % (SPAD_WINDOW - first.k + 1))
    _run(config, [first, again, _random_matmul(rng, config, *last_mk, 4, True)], rng, gaps=True)


def test_default_config():
    # The default geometry with one MATMUL at a time and no preload (the shipped preset overlaps two
    # MATMULs: tests/hw/test_matmul_overlap.py::test_the_default_preset_back_to_back).
    config = Config.parse("default:weight_preload=0,matmul_overlap=0,name=default_serial")
    rng = np.random.default_rng(13)
    _run(config, [_random_matmul(rng, config, 10, 19, 6, True), _random_matmul(rng, config, 3, 8, 8, False)],
         rng, gaps=False)


def test_rejects_non_config():
    with pytest.raises(TypeError, match="needs a braze.isa.Config, not 'tiny'"):
        MatmulUnit("tiny")


def test_converts_to_verilog():
    text = verilog.convert(MatmulUnit(Config.preset("tiny")), name="matmul_unit")
    assert "module matmul_unit" in text


# Weight preload (Config.weight_preload): the same checks -- results, exact cycles, counter pulses.
def test_preload_default_config():
    config = Config.parse("default:matmul_overlap=0,name=default_preload")
    rng = np.random.default_rng(23)
    _run(config, [_random_matmul(rng, config, 10, 19, 6, True), _random_matmul(rng, config, 3, 24, 8, False),
                  _random_matmul(rng, config, 9, 17, 8, True)], rng, gaps=False)


def test_preload_saves_what_overlapping_each_later_chunk_saves():
    """Each chunk after the first hides min(rows, m - 1) of its rows + m cycles: all of its preload
    when m > rows, all but one cycle of the stream otherwise (nothing with m = 1)."""
    for m, k in [(1, 4), (9, 4), (1, 8), (2, 8), (4, 8), (5, 8), (9, 8), (3, 13)]:
        serial, preload = _contract_cycles(Config.preset("tiny"), m, k), _contract_cycles(TINY_PRELOAD, m, k)
        chunks = -(-k // 4)
        assert serial - preload == (chunks - 1) * min(4, m - 1), (m, k)
