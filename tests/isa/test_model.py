"""Instruction semantics of the reference model against plain numpy/Python written here."""

import struct
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braze.isa import COUNTERS, SNAPSHOT_BYTES, Config, ConfigReg
from braze.isa import Instruction as I
from braze.isa.model import Machine, run_program
from braze.isa.timing import schedule

TINY = Config.preset("tiny")                                # 4 x 4, 1024 spad rows, 256 acc rows, 8-byte bus
WIDE = Config(name="wide", rows=4, cols=16, dma_bus_bits=64)  # more columns per row for corner cases
DATA = 0x1000
OUT = 0x8000
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def wrap32(v: int) -> int:
    return (v + (1 << 31)) % (1 << 32) - (1 << 31)


def clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def sat(v: int, spad: bool) -> int:
    return clamp(v, -128, 127) if spad else clamp(v, INT32_MIN, INT32_MAX)


def round_half_even(num: int, shift: int) -> int:
    return round(Fraction(num, 1 << shift))


def beats(start: int, rows: int, stride: int, row_bytes: int, bus: int) -> int:
    firsts = [start + r * stride for r in range(rows)]
    return sum((first + row_bytes - 1) // bus - first // bus + 1 for first in firsts)


def random_state(machine: Machine, seed: int) -> None:
    rng = np.random.default_rng(seed)
    machine.spad[:] = rng.integers(-128, 128, machine.spad.shape)
    machine.acc[:] = rng.integers(INT32_MIN, INT32_MAX, machine.acc.shape, endpoint=True)


def run_one(machine: Machine, *insns: I):
    """Run instructions (ending in HALT) from address 0; the program needs no tokens."""
    return machine.run_program(list(insns) + [I.make("halt")])


# LOAD ------------------------------------------------------------------------------------------------------

def test_load_spad_strided_partial_rows():
    machine = Machine(TINY)
    rng = np.random.default_rng(1)
    blob = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
    machine.write_dram(DATA, blob)
    machine.spad[:] = 0x55
    dram, rows, length, stride = DATA + 3, 5, 3, 7
    insn = I.make("load", mem="spad", addr=10, rows=rows, len=length, dram=dram, stride=stride)
    result = run_one(machine, insn)
    for r in range(rows):
        offset = dram - DATA + r * stride
        expected = [b - 256 if b >= 128 else b for b in blob[offset:offset + length]] + [0] * (4 - length)
        assert machine.spad[10 + r].tolist() == expected
    assert (machine.spad[:10] == 0x55).all() and (machine.spad[10 + rows:] == 0x55).all()
    counters = result.counters
    assert counters["dma_read_bytes"] == rows * length
    assert counters["axi_read_beats"] == beats(dram, rows, stride, length, 8)
    assert counters["spad_writes"] == rows and counters["acc_writes"] == 0
    assert counters["insn_load"] == 1


def test_load_acc_int32_little_endian():
    machine = Machine(TINY)
    rng = np.random.default_rng(2)
    blob = rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    machine.write_dram(DATA, blob)
    machine.acc[:] = 77
    rows, length, stride = 4, 3, 20
    insn = I.make("load", mem="acc", addr=100, rows=rows, len=length, dram=DATA, stride=stride)
    result = run_one(machine, insn)
    for r in range(rows):
        words = [int.from_bytes(blob[r * stride + 4 * j:r * stride + 4 * j + 4], "little", signed=True)
                 for j in range(length)]
        assert machine.acc[100 + r].tolist() == words + [0]
    assert (machine.acc[99] == 77).all() and (machine.acc[104] == 77).all()
    assert result.counters["dma_read_bytes"] == rows * length * 4
    assert result.counters["axi_read_beats"] == beats(DATA, rows, stride, 12, 8)
    assert result.counters["acc_writes"] == rows


@pytest.mark.parametrize("mem", ["spad", "acc"])
def test_load_zero(mem):
    machine = Machine(TINY)
    random_state(machine, 3)
    before_spad, before_acc = machine.spad.copy(), machine.acc.copy()
    # dram beyond memory: with `zero` nothing is read, so it is no error.
    result = run_one(machine, I.make("load", mem=mem, zero=True, addr=7, rows=3, len=2, dram=0xFFFF_FFF0))
    local, before = (machine.spad, before_spad) if mem == "spad" else (machine.acc, before_acc)
    other, other_before = (machine.acc, before_acc) if mem == "spad" else (machine.spad, before_spad)
    assert (local[7:10] == 0).all()
    assert (local[:7] == before[:7]).all() and (local[10:] == before[10:]).all()
    assert (other == other_before).all()
    assert result.counters["dma_read_bytes"] == 0 and result.counters["axi_read_beats"] == 0
    assert result.counters[f"{mem}_writes"] == 3


# STORE -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mem", ["spad", "acc"])
def test_store_strided(mem):
    machine = Machine(TINY)
    random_state(machine, 4)
    machine.write_dram(OUT, b"\xaa" * 256)
    rows, length, stride, dram = 3, 3, 17, OUT + 5
    insn = I.make("store", mem=mem, addr=20, rows=rows, len=length, dram=dram, stride=stride)
    result = run_one(machine, insn)
    size = 1 if mem == "spad" else 4
    local = machine.spad if mem == "spad" else machine.acc
    expected = bytearray(b"\xaa" * 256)
    for r in range(rows):
        row = b"".join(int(v).to_bytes(size, "little", signed=True) for v in local[20 + r, :length])
        start = dram - OUT + r * stride
        expected[start:start + len(row)] = row
    assert machine.read_dram(OUT, 256) == bytes(expected)
    assert result.counters["dma_write_bytes"] == rows * length * size
    assert result.counters["axi_write_beats"] == beats(dram, rows, stride, length * size, 8)
    assert result.counters[f"{mem}_reads"] == rows


def test_store_overlapping_rows_later_rows_win():
    machine = Machine(TINY)
    random_state(machine, 5)
    run_one(machine, I.make("store", mem="acc", addr=0, rows=4, len=4, dram=OUT, stride=6))
    expected = bytearray(64)
    for r in range(4):
        row = b"".join(int(v).to_bytes(4, "little", signed=True) for v in machine.acc[r])
        expected[r * 6:r * 6 + 16] = row
    assert machine.read_dram(OUT, 64)[:3 * 6 + 16] == bytes(expected[:3 * 6 + 16])


def test_load_then_store_round_trip_with_token():
    machine = Machine(TINY)
    rng = np.random.default_rng(6)
    tile = rng.integers(INT32_MIN, INT32_MAX, (5, 4), dtype=np.int32, endpoint=True)
    machine.write_dram(DATA, tile.astype("<i4").tobytes())
    program = [
        I.make("load", mem="acc", addr=0, rows=5, len=4, dram=DATA, stride=16, push_next=True),
        I.make("config", reg="out_zp", value=0, pop_prev=True, push_next=True),
        I.make("store", mem="acc", addr=0, rows=5, len=4, dram=OUT, stride=16, pop_prev=True),
        I.make("halt"),
    ]
    machine.run_program(program)
    assert np.frombuffer(machine.read_dram(OUT, 80), "<i4").reshape(5, 4).tolist() == tile.tolist()


# MATMUL ----------------------------------------------------------------------------------------------------

def matmul_reference(spad, acc, config, *, acc_row, a, b, a_stride, m, n, k, accumulate):
    rows = config.rows
    expected = acc.astype(np.int64).tolist()
    for i in range(m):
        for j in range(n):
            total = 0
            for kk in range(k):
                a_value = int(spad[a + (kk // rows) * a_stride + i][kk % rows])
                total += a_value * int(spad[b + kk][j])
            base = expected[acc_row + i][j] if accumulate else 0
            expected[acc_row + i][j] = wrap32(base + total)
    return expected


@pytest.mark.parametrize(("config", "m", "n", "k", "a_stride", "accumulate"), [
    (TINY, 3, 4, 4, 3, False),        # one chunk
    (TINY, 5, 3, 9, 5, True),         # k > rows, not a multiple
    (TINY, 2, 2, 3, 7, False),        # k < rows, a_stride != m
    (TINY, 4, 4, 12, 2, True),        # a_stride < m: chunks share rows
    (TINY, 1, 1, 1, 0, True),
    (Config.preset("default"), 10, 5, 20, 12, True),
    (Config.preset("default"), 9, 8, 16, 9, False),
])
def test_matmul_against_loops(config, m, n, k, a_stride, accumulate):
    machine = Machine(config)
    random_state(machine, m * 100 + k)
    fields = dict(acc_row=30, a=40, b=200, a_stride=a_stride, m=m, n=n, k=k, accumulate=accumulate)
    expected = matmul_reference(machine.spad, machine.acc, config, **fields)
    spad_before = machine.spad.copy()
    insn = I.make("matmul", acc=30, a=40, b=200, a_stride=a_stride, m=m, n=n, k=k, accumulate=accumulate)
    result = run_one(machine, insn)
    assert machine.acc.tolist() == expected          # includes untouched rows and columns >= n
    assert (machine.spad == spad_before).all()
    chunks = -(-k // config.rows)
    c = result.counters
    assert c["macs"] == m * n * k
    assert c["spad_reads"] == chunks * m + k
    assert c["acc_reads"] == m * (chunks if accumulate else chunks - 1)
    assert c["acc_writes"] == m * chunks
    assert c["insn_matmul"] == 1


@pytest.mark.parametrize(("b_value", "initial"), [(-128, INT32_MAX - 5), (127, INT32_MIN + 5)])
def test_matmul_accumulate_wraps_int32(b_value, initial):
    machine = Machine(TINY)
    machine.spad[:] = -128
    machine.spad[100:112] = b_value
    machine.acc[:] = initial
    run_one(machine, I.make("matmul", acc=0, a=0, b=100, a_stride=2, m=2, n=3, k=12, accumulate=True))
    expected = wrap32(initial + -128 * b_value * 12)
    assert expected != initial + -128 * b_value * 12                # it did wrap
    assert (machine.acc[:2, :3] == expected).all()
    assert (machine.acc[:2, 3] == initial).all() and (machine.acc[2:] == initial).all()


def test_matmul_overwrite_ignores_old_accumulator():
    machine = Machine(TINY)
    machine.spad[:] = -128
    machine.acc[:] = INT32_MAX
    run_one(machine, I.make("matmul", acc=0, a=0, b=0, a_stride=2, m=2, n=3, k=9))
    assert (machine.acc[:2, :3] == 128 * 128 * 9).all()
    assert (machine.acc[:2, 3] == INT32_MAX).all()


# EPILOGUE --------------------------------------------------------------------------------------------------

def epilogue_reference(machine, regs, *, src, m, n, dst, out, bias, bias_addr, requant, quant_addr,
                       residual, res_addr, act):
    acc, spad = machine.acc.astype(np.int64), machine.spad.astype(np.int64)
    rows = []
    for i in range(m):
        row = []
        for j in range(n):
            x = int(acc[src + i][j])
            if bias:
                x = wrap32(x + int(acc[bias_addr][j]))
            if requant:
                shift = int(acc[quant_addr + 1][j]) % 64
                x = sat(round_half_even(x * int(acc[quant_addr][j]), shift) + regs["out_zp"], False)
            if residual:
                x = sat(x + int(spad[res_addr + i][j]), False)
            if act == "relu":
                x = max(x, 0)
            elif act == "clip":
                x = min(max(x, regs["clip_lo"]), regs["clip_hi"])
            row.append(sat(x, out == "spad"))
        rows.append(row + [0] * (machine.config.cols - n))
    return rows


def config_program(regs):
    return [I.make("config", reg=name, value=value) for name, value in regs.items()]


@pytest.mark.parametrize("out", ["spad", "acc"])
@pytest.mark.parametrize("act", ["none", "relu", "clip"])
@pytest.mark.parametrize("stages", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)])
def test_epilogue_stages(stages, act, out):
    bias, requant, residual = stages
    machine = Machine(WIDE)
    random_state(machine, 7 + sum(stages) * 10 + len(act))
    rng = np.random.default_rng(8)
    # Spread magnitudes so that some values saturate and some do not.
    machine.acc[0:6] >>= rng.integers(0, 31, (6, WIDE.cols))
    machine.acc[61] = rng.integers(-(1 << 20), 1 << 20, WIDE.cols)                 # multipliers
    machine.acc[62] = rng.integers(INT32_MIN, INT32_MAX, WIDE.cols, endpoint=True)  # shifts: low 6 bits
    regs = {"out_zp": int(rng.integers(-50, 50)), "clip_lo": -40, "clip_hi": 90}
    fields = dict(src=0, m=6, n=11, dst=100, out=out, bias=bool(bias), bias_addr=60, requant=bool(requant),
                  quant_addr=61, residual=bool(residual), res_addr=300, act=act)
    expected = epilogue_reference(machine, regs, **fields)
    dst = machine.spad if out == "spad" else machine.acc
    dst[100:106] = 99                                # columns >= n must become 0
    result = machine.run_program(config_program(regs) + [I.make("epilogue", **fields), I.make("halt")])
    assert dst[100:106].tolist() == expected
    c = result.counters
    assert c["acc_reads"] == 6 + bias + 2 * requant
    assert c["spad_reads"] == (6 if residual else 0)
    assert c[f"{out}_writes"] == 6
    assert c["insn_epilogue"] == 1 and c["insn_config"] == 3


# (x, mult, shift register value, out_zp, out) for single-element EPILOGUEs with requantize.
REQUANT_CORNERS = [
    (3, 1, 1, 0, "acc"), (5, 1, 1, 0, "acc"), (-3, 1, 1, 0, "acc"), (-5, 1, 1, 0, "acc"),  # ties to even
    (7, 3, 2, 0, "acc"), (-7, 3, 2, 0, "acc"),                                              # 5.25, -5.25
    (12345, -7, 0, 3, "acc"),                                                              # shift 0
    (INT32_MIN, INT32_MIN, 63, 0, "acc"), (INT32_MIN, INT32_MAX, 63, 0, "acc"),            # shift 63
    (INT32_MAX, INT32_MAX, 0, 0, "acc"), (INT32_MIN, INT32_MAX, 0, 0, "acc"),              # saturate int32
    (INT32_MAX, 1, 0, 1, "acc"), (INT32_MIN, 1, 0, -1, "acc"),                 # the zero point saturates
    (INT32_MAX, INT32_MAX, 61, 0, "acc"), (-(1 << 30), INT32_MAX, 60, 0, "acc"),          # large multipliers
    (1000, 1, 2, 0, "spad"), (-1000, 1, 2, 0, "spad"), (255, 1, 1, 0, "spad"),            # saturate int8
    (-257, 1, 1, 0, "spad"), (254, 1, 1, 0, "spad"),
    (9, 1, 64 + 1, 0, "acc"), (9, 1, -1, 0, "acc"), (1 << 30, 4, -62, 0, "acc"),         # shift & 63
]


@pytest.mark.parametrize(("x", "mult", "shift", "zp", "out"), REQUANT_CORNERS)
def test_epilogue_requantize_corners(x, mult, shift, zp, out):
    machine = Machine(TINY)
    machine.acc[0, 0], machine.acc[1, 0], machine.acc[2, 0] = x, mult, shift
    program = [I.make("config", reg="out_zp", value=zp),
               I.make("epilogue", src=0, m=1, n=1, dst=10, out=out, requant=True, quant_addr=1),
               I.make("halt")]
    machine.run_program(program)
    expected = sat(sat(round_half_even(x * mult, shift % 64) + zp, False), out == "spad")
    dst = machine.spad if out == "spad" else machine.acc
    assert int(dst[10, 0]) == expected
    assert dst[10, 1:].tolist() == [0, 0, 0]


def test_epilogue_in_place_on_accumulator():
    machine = Machine(TINY)
    random_state(machine, 9)
    machine.acc[0:4] //= 1 << 8
    expected = [[max(int(v) + int(machine.acc[10][j]), 0) for j, v in enumerate(row[:3])] + [0]
                for row in machine.acc[0:4]]
    run_one(machine, I.make("epilogue", src=0, m=4, n=3, dst=0, out="acc", bias=True, bias_addr=10,
                            act="relu"))
    assert machine.acc[0:4].tolist() == expected


# VECTOR ----------------------------------------------------------------------------------------------------

def vector_reference(op, x, y, shift, lo, hi, spad_out):
    if op == "add":
        r = x + y
    elif op == "sub":
        r = x - y
    elif op == "mul":
        r = round_half_even(x * y, shift)
    elif op == "max":
        r = max(x, y)
    elif op == "min":
        r = min(x, y)
    elif op == "shr":
        r = round_half_even(x, shift)
    elif op == "clip":
        r = min(max(x, lo), hi)
    else:
        r = x
    return sat(r, spad_out)


OPS = ["add", "sub", "mul", "max", "min", "shr", "clip", "mov"]
MEMS = ["spad", "acc"]


@pytest.mark.parametrize("use_imm", [False, True])
@pytest.mark.parametrize("src2_mem", MEMS)
@pytest.mark.parametrize("src1_mem", MEMS)
@pytest.mark.parametrize("dst_mem", MEMS)
@pytest.mark.parametrize("op", OPS)
def test_vector(op, dst_mem, src1_mem, src2_mem, use_imm):
    machine = Machine(TINY)
    seed = OPS.index(op) * 16 + MEMS.index(dst_mem) * 8 + MEMS.index(src1_mem) * 4 + MEMS.index(src2_mem) * 2
    random_state(machine, seed + use_imm)
    rng = np.random.default_rng(seed)
    # Accumulator values of every magnitude, so results saturate in both directions sometimes.
    machine.acc[:] >>= rng.integers(0, 31, machine.acc.shape)
    machine.spad[40:44] = [[-128, 127, 0, -1]] * 4
    shift, imm = int(rng.integers(0, 32)), int(rng.integers(-(1 << 15), 1 << 15))
    regs = {"clip_lo": -1000, "clip_hi": 77}
    fields = dict(op=op, dst_mem=dst_mem, src1_mem=src1_mem, src2_mem=src2_mem, use_imm=use_imm,
                  dst=50, src1=40, src2=20, rows=4, imm=imm, shift=shift)
    local = {"spad": machine.spad, "acc": machine.acc}
    binary = op not in ("shr", "clip", "mov")
    expected = []
    for i in range(4):
        row = []
        for j in range(TINY.cols):
            x = int(local[src1_mem][40 + i][j])
            y = imm if use_imm else int(local[src2_mem][20 + i][j])
            row.append(vector_reference(op, x, y, shift, regs["clip_lo"], regs["clip_hi"], dst_mem == "spad"))
        expected.append(row)
    result = machine.run_program(config_program(regs) + [I.make("vector", **fields), I.make("halt")])
    assert local[dst_mem][50:54].tolist() == expected
    reads = {"spad": 0, "acc": 0}
    reads[src1_mem] += 4
    if binary and not use_imm:
        reads[src2_mem] += 4
    assert result.counters["spad_reads"] == reads["spad"]
    assert result.counters["acc_reads"] == reads["acc"]
    assert result.counters[f"{dst_mem}_writes"] == 4
    assert result.counters["insn_vector"] == 1


def test_vector_in_place():
    machine = Machine(TINY)
    random_state(machine, 10)
    expected = [[sat(int(v) + 100, True) for v in row] for row in machine.spad[5:8]]
    run_one(machine, I.make("vector", op="add", dst_mem="spad", src1_mem="spad", use_imm=True, imm=100,
                            dst=5, src1=5, rows=3))
    assert machine.spad[5:8].tolist() == expected


# CONFIG, COUNTERS, HALT ------------------------------------------------------------------------------------

def test_config_registers():
    machine = Machine(TINY)
    assert machine.config_regs == {reg: 0 for reg in ConfigReg}
    run_one(machine, I.make("config", reg="clip_hi", value=-5),
            I.make("config", reg="out_zp", value=INT32_MIN))
    assert machine.config_regs == {ConfigReg.CLIP_LO: 0, ConfigReg.CLIP_HI: -5, ConfigReg.OUT_ZP: INT32_MIN}


def parse(blob: bytes) -> dict[str, int]:
    values = struct.unpack(f"<{len(COUNTERS)}Q", blob)
    return {spec.name: value for spec, value in zip(COUNTERS, values, strict=True)}


def test_counters_snapshots_and_reset():
    machine = Machine(TINY)
    snap1, snap2 = OUT, OUT + 0x400 + 3          # the second one unaligned on the bus
    program = [
        I.make("load", mem="spad", addr=0, rows=8, len=4, dram=DATA, stride=4, push_next=True),
        I.make("matmul", acc=0, a=0, b=4, a_stride=4, m=4, n=4, k=4, pop_prev=True),
        I.make("counters", dram=snap1),
        I.make("vector", op="mov", dst_mem="acc", src1_mem="acc", dst=8, src1=0, rows=2),
        I.make("counters", dram=snap2, reset=True),
        I.make("config", reg="clip_lo", value=1),
        I.make("halt"),
    ]
    result = machine.run_program(program)
    first = parse(machine.read_dram(snap1, SNAPSHOT_BYTES))
    second = parse(machine.read_dram(snap2, SNAPSHOT_BYTES))
    timeline = result.timeline
    load, matmul, counters1, vector, counters2, config, halt = timeline
    assert [e.pc for e in timeline] == [16 * i for i in range(7)]

    assert first["insn_load"] == 1 and first["insn_matmul"] == 1 and first["insn_counters"] == 0
    assert first["macs"] == 64 and first["dma_read_bytes"] == 32 and first["dma_write_bytes"] == 0
    # One bus word per 4-byte row: rows are separate transfers.
    assert first["axi_read_beats"] == 8 and first["spad_writes"] == 8 and first["acc_writes"] == 4
    assert first["cycles"] == counters1.start
    assert first["load_busy"] == load.end - load.start
    assert first["array_busy"] == matmul.end - matmul.start
    # The token wait of the MATMUL, and the snapshot's own wait as a barrier (it precedes the snapshot).
    assert first["stall_dep"] == (matmul.start - matmul.dispatch) + (counters1.start - counters1.dispatch)
    assert first["stall_axi_read"] == first["stall_axi_write"] == first["stall_fetch"] == 0

    snapshot_beats = (SNAPSHOT_BYTES + 7) // 8
    assert second["insn_counters"] == 1 and second["insn_vector"] == 1 and second["insn_load"] == 1
    assert second["dma_write_bytes"] == SNAPSHOT_BYTES and second["axi_write_beats"] == snapshot_beats
    assert second["acc_reads"] == 2 and second["acc_writes"] == 4 + 2
    assert second["vector_busy"] == vector.end - vector.start
    assert second["cycles"] == counters2.start
    assert second["stall_dep"] == first["stall_dep"] + vector.stall_dep + counters2.start - counters2.dispatch

    final = result.counters
    unaligned_beats = (3 + SNAPSHOT_BYTES + 7) // 8
    expected_final = {name: 0 for name in final}
    expected_final.update(insn_counters=1, insn_config=1, insn_halt=1, dma_write_bytes=SNAPSHOT_BYTES,
                          axi_write_beats=unaligned_beats, cycles=halt.end - counters2.start)
    assert final == expected_final
    assert result.cycles == halt.end
    assert result.instructions == 7 and result.status == "done"


def test_halt_stops_and_counts_itself():
    machine = Machine(TINY)
    # An illegal word after HALT is never fetched.
    program = I.make("fence").to_bytes() + I.make("halt").to_bytes() + bytes(16)
    result = machine.run_program(program, base=0x200)
    assert result.halt_pc == 0x210
    assert result.instructions == 2
    assert result.counters["insn_halt"] == 1 and result.counters["insn_fence"] == 1
    assert result.counters["cycles"] == result.cycles == 2


def test_run_resets_counters_but_keeps_memories():
    machine = Machine(TINY)
    machine.spad[3] = 9
    run_one(machine, I.make("config", reg="clip_lo", value=4))
    result = run_one(machine)
    assert result.counters["insn_config"] == 0 and result.counters["insn_halt"] == 1
    assert machine.config_regs[ConfigReg.CLIP_LO] == 4 and (machine.spad[3] == 9).all()


def test_host_memory_access():
    machine = Machine(TINY)
    machine.write_dram(5, b"\x01\x02\x03")
    machine.write_dram(8, np.array([-2], dtype="<i4"))
    assert machine.read_dram(4, 8) == b"\x00\x01\x02\x03\xfe\xff\xff\xff"
    with pytest.raises(ValueError, match="outside"):
        machine.write_dram(TINY.dram_bytes - 1, b"ab")
    with pytest.raises(ValueError, match="outside"):
        machine.read_dram(TINY.dram_bytes, 1)


def test_run_program_function():
    machine, result = run_program([I.make("halt")], TINY, base=0x40, data={0x100: b"xyz"})
    assert machine.read_dram(0x100, 3) == b"xyz"
    assert result.halt_pc == 0x40


# Random geometry (hypothesis) ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 6), n=st.integers(1, 4), k=st.integers(1, 13), a_stride=st.integers(0, 8),
       accumulate=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_matmul_random_shapes(m, n, k, a_stride, accumulate, seed):
    machine = Machine(TINY)
    random_state(machine, seed)
    expected = matmul_reference(machine.spad, machine.acc, TINY, acc_row=3, a=11, b=90, a_stride=a_stride,
                                m=m, n=n, k=k, accumulate=accumulate)
    run_one(machine, I.make("matmul", acc=3, a=11, b=90, a_stride=a_stride, m=m, n=n, k=k,
                            accumulate=accumulate))
    assert machine.acc.tolist() == expected


@settings(max_examples=60, deadline=None)
@given(mem=st.sampled_from(["spad", "acc"]), rows=st.integers(1, 6), length=st.integers(1, 4),
       stride=st.integers(0, 40), offset=st.integers(0, 15), seed=st.integers(0, 2**32 - 1))
def test_load_and_store_random_geometry(mem, rows, length, stride, offset, seed):
    machine = Machine(TINY)
    random_state(machine, seed)
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 256, 512, dtype=np.uint8).tobytes()
    machine.write_dram(DATA, blob)
    machine.write_dram(OUT, blob)
    size = 1 if mem == "spad" else 4
    local = machine.spad if mem == "spad" else machine.acc
    expected_local = local.copy()
    for r in range(rows):
        start = offset + r * stride
        values = [int.from_bytes(blob[start + size * j:start + size * (j + 1)], "little", signed=True)
                  for j in range(length)]
        expected_local[30 + r] = values + [0] * (TINY.cols - length)
    store_rows = local[60:60 + rows, :length].tolist()
    expected_out = bytearray(blob)
    for r in range(rows):
        row = b"".join(int(v).to_bytes(size, "little", signed=True) for v in store_rows[r])
        start = offset + r * stride
        expected_out[start:start + len(row)] = row
    geometry = dict(mem=mem, rows=rows, len=length, stride=stride)
    result = run_one(machine, I.make("load", addr=30, dram=DATA + offset, **geometry),
                     I.make("store", addr=60, dram=OUT + offset, **geometry))
    assert local.tolist() == expected_local.tolist()
    assert machine.read_dram(OUT, 512) == bytes(expected_out)
    assert result.counters["dma_read_bytes"] == result.counters["dma_write_bytes"] == rows * length * size
    assert result.counters["axi_read_beats"] == beats(DATA + offset, rows, stride, length * size, 8)
    assert result.counters["axi_write_beats"] == beats(OUT + offset, rows, stride, length * size, 8)


def test_model_cycles_are_the_schedule():
    program = [
        I.make("load", mem="spad", addr=0, rows=8, len=4, dram=DATA, stride=4, push_next=True),
        I.make("matmul", acc=0, a=0, b=4, a_stride=4, m=4, n=4, k=4, pop_prev=True, push_next=True),
        I.make("epilogue", src=0, m=4, n=4, dst=100),
        I.make("store", mem="acc", addr=0, rows=4, len=4, dram=OUT, stride=16, pop_prev=True),
        I.make("halt"),
    ]
    result = Machine(TINY).run_program(program)
    sched = schedule(program, TINY)
    assert result.cycles == sched.cycles == result.counters["cycles"]
    assert [(e.start, e.end) for e in result.timeline] == [(e.start, e.end) for e in sched.entries]
    for name, value in sched.busy.items():
        assert result.counters[name] == value
    assert result.counters["stall_dep"] == sched.stall_dep


@pytest.mark.parametrize("a_stride", [0, 1, 3])
def test_matmul_long_reduction(a_stride):
    """More K-chunks than the model multiplies in one step; A chunks overlapping or disjoint."""
    config = Config(name="narrow", rows=2, cols=2, spad_bytes=32 * 1024, acc_bytes=1024, dma_bus_bits=64)
    machine = Machine(config)
    random_state(machine, 13 + a_stride)
    m, n, k, a, b = 3, 2, 9001, 5, 7000
    kk = np.arange(k)
    a_matrix = np.stack([machine.spad[a + (kk // 2) * a_stride + i, kk % 2] for i in range(m)])
    b_matrix = machine.spad[b:b + k, :n]
    expected = [[wrap32(int(machine.acc[4 + i, j]) + int(a_matrix[i].astype(np.int64) @ b_matrix[:, j]))
                 for j in range(n)] for i in range(m)]
    run_one(machine, I.make("matmul", acc=4, a=a, b=b, a_stride=a_stride, m=m, n=n, k=k, accumulate=True))
    assert machine.acc[4:4 + m].tolist() == expected
