"""``check_ranges`` against the range rules restated here, on random fields near every boundary.

The hardware decoder's tests use ``check_ranges`` as their oracle, so it is
checked here field by field against the architectural rules (first failure
wins, exact arithmetic) for three configurations.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from braze.isa import Config, ErrorCause, ExecutionError
from braze.isa import Instruction as I
from braze.isa.model import check_ranges

CONFIGS = [Config.preset(name) for name in ("tiny", "default", "large")]
U16 = (1 << 16) - 1
BINARY = {"add", "sub", "mul", "max", "min"}


def rows_of(config, mem):
    return config.spad_rows if mem == "spad" else config.acc_rows


def expected_cause(insn: I, config: Config) -> ErrorCause | None:
    """The first range rule ``insn`` breaks, written from the architecture's rule list."""
    R, COLS, S, A = config.rows, config.cols, config.spad_rows, config.acc_rows
    over = {"spad": ErrorCause.SPAD_RANGE, "acc": ErrorCause.ACC_RANGE}
    f = {k: (v.name.lower() if hasattr(v, "name") else v) for k, v in insn.args.items()}
    op = insn.format.mnemonic
    if op in ("load", "store"):
        if f["len"] > COLS:
            return ErrorCause.TILE_RANGE
        if f["addr"] + f["rows"] > rows_of(config, f["mem"]):
            return over[f["mem"]]
    elif op == "matmul":
        chunks = (f["k"] + R - 1) // R
        if f["n"] > COLS:
            return ErrorCause.TILE_RANGE
        if f["acc"] + f["m"] > A:
            return ErrorCause.ACC_RANGE
        if f["a"] + (chunks - 1) * f["a_stride"] + f["m"] > S:
            return ErrorCause.SPAD_RANGE
        if f["b"] + f["k"] > S:
            return ErrorCause.SPAD_RANGE
    elif op == "epilogue":
        if f["n"] > COLS:
            return ErrorCause.TILE_RANGE
        if f["src"] + f["m"] > A:
            return ErrorCause.ACC_RANGE
        if f["bias"] and f["bias_addr"] >= A:
            return ErrorCause.ACC_RANGE
        if f["requant"] and f["quant_addr"] + 1 >= A:
            return ErrorCause.ACC_RANGE
        if f["residual"] and f["res_addr"] + f["m"] > S:
            return ErrorCause.SPAD_RANGE
        if f["dst"] + f["m"] > rows_of(config, f["out"]):
            return over[f["out"]]
    elif op == "vector":
        if f["src1"] + f["rows"] > rows_of(config, f["src1_mem"]):
            return over[f["src1_mem"]]
        if f["op"] in BINARY and not f["use_imm"] and f["src2"] + f["rows"] > rows_of(config, f["src2_mem"]):
            return over[f["src2_mem"]]
        if f["dst"] + f["rows"] > rows_of(config, f["dst_mem"]):
            return over[f["dst_mem"]]
    return None


def near(*limits):
    """Integers 0..65535 clustered around the given limits (and anywhere, sometimes)."""
    around = [st.integers(max(0, x - 3), min(U16, x + 3)) for x in limits]
    return st.one_of(*around, st.integers(0, U16))


def count(*limits):
    return near(*limits).map(lambda v: max(v, 1))


@st.composite
def instructions(draw, config):
    S, A, COLS = config.spad_rows, config.acc_rows, config.cols
    mem = st.sampled_from(["spad", "acc"])
    flag = st.booleans()
    width = st.one_of(st.integers(COLS - 1, COLS + 1), st.integers(1, COLS), st.integers(1, 64))
    op = draw(st.sampled_from(["load", "store", "matmul", "epilogue", "vector"]))
    if op in ("load", "store"):
        fields = dict(mem=draw(mem), addr=draw(near(0, S, A)), rows=draw(count(1, S, A)),
                      len=draw(width), dram=0, stride=0)
        if op == "load":
            fields["zero"] = draw(flag)
    elif op == "matmul":
        fields = dict(acc=draw(near(0, A)), a=draw(near(0, S)), b=draw(near(0, S)),
                      a_stride=draw(near(0, 1, 16, S)), m=draw(count(1, 16, A)),
                      n=draw(width),
                      k=draw(count(1, config.rows, S)), accumulate=draw(flag))
    elif op == "epilogue":
        fields = dict(src=draw(near(0, A)), m=draw(count(1, A, S)),
                      n=draw(width), dst=draw(near(0, A, S)),
                      out=draw(mem), bias=draw(flag), bias_addr=draw(near(0, A)), requant=draw(flag),
                      quant_addr=draw(near(0, A - 1)), residual=draw(flag), res_addr=draw(near(0, S)))
    else:
        fields = dict(op=draw(st.sampled_from(["add", "sub", "mul", "max", "min", "shr", "clip", "mov"])),
                      dst_mem=draw(mem), src1_mem=draw(mem), src2_mem=draw(mem), use_imm=draw(flag),
                      dst=draw(near(0, A, S)), src1=draw(near(0, A, S)), src2=draw(near(0, A, S)),
                      rows=draw(count(1, A, S)))
    return I.make(op, **fields)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_check_ranges_matches_the_rules(config, data):
    insn = data.draw(instructions(config))
    cause = expected_cause(insn, config)
    if cause is None:
        check_ranges(insn, config)
        return
    with pytest.raises(ExecutionError) as info:
        check_ranges(insn, config, pc=0x40)
    assert info.value.cause is cause and info.value.pc == 0x40
