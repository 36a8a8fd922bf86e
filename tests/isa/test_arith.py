"""``round_shift`` and ``requantize`` of braze.isa.arith against exact Python big-int arithmetic."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from braze.isa import arith

INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
SHIFT = st.integers(0, 63)


def exact_round_shift(x: int, shift: int) -> int:
    # Python's round() on a Fraction rounds half to even: an independent oracle.
    return round(Fraction(x, 1 << shift))


def exact_requantize(x: int, mult: int, shift: int, zero_point: int) -> int:
    value = exact_round_shift(x * mult, shift) + zero_point
    return max(-(1 << 31), min((1 << 31) - 1, value))


@settings(max_examples=400, deadline=None)
@given(x=INT64, shift=SHIFT)
@example(x=5, shift=1)            # 2.5 -> 2
@example(x=7, shift=1)            # 3.5 -> 4
@example(x=-5, shift=1)           # -2.5 -> -2
@example(x=-7, shift=1)           # -3.5 -> -4
@example(x=-1, shift=63)
@example(x=-(1 << 63), shift=63)  # exactly -1
@example(x=(1 << 63) - 1, shift=63)
@example(x=(1 << 62), shift=63)   # exactly 0.5 -> 0
@example(x=-(1 << 62), shift=63)  # exactly -0.5 -> 0
@example(x=123, shift=0)
def test_round_shift_scalar(x, shift):
    assert int(arith.round_shift(np.int64(x), shift)) == exact_round_shift(x, shift)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(INT64, SHIFT), min_size=1, max_size=40))
def test_round_shift_vector_with_per_element_shift(pairs):
    xs = np.array([x for x, _ in pairs], dtype=np.int64)
    shifts = np.array([s for _, s in pairs], dtype=np.int64)
    assert arith.round_shift(xs, shifts).tolist() == [exact_round_shift(x, s) for x, s in pairs]


def test_round_shift_rejects_bad_shift():
    with pytest.raises(ValueError):
        arith.round_shift(np.int64(1), 64)
    with pytest.raises(ValueError):
        arith.round_shift(np.int64(1), -1)


@settings(max_examples=400, deadline=None)
@given(x=INT32, mult=INT32, shift=SHIFT, zero_point=INT32)
@example(x=(1 << 31) - 1, mult=(1 << 31) - 1, shift=0, zero_point=0)       # saturates high
@example(x=-(1 << 31), mult=(1 << 31) - 1, shift=0, zero_point=0)          # saturates low
@example(x=-(1 << 31), mult=-(1 << 31), shift=62, zero_point=0)            # 2**62 / 2**62 = 1
@example(x=-(1 << 31), mult=-(1 << 31), shift=63, zero_point=-1)           # 0.5 -> 0, then -1
@example(x=3, mult=1, shift=1, zero_point=0)                              # 1.5 -> 2
@example(x=-3, mult=1, shift=1, zero_point=0)                             # -1.5 -> -2
@example(x=1, mult=1, shift=1, zero_point=0)                              # 0.5 -> 0
@example(x=(1 << 31) - 1, mult=1, shift=0, zero_point=1)                  # zero point saturates
def test_requantize_scalar(x, mult, shift, zero_point):
    got = arith.requantize(np.int64(x), np.int64(mult), np.int64(shift), zero_point)
    assert int(got) == exact_requantize(x, mult, shift, zero_point)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(INT32, INT32, SHIFT), min_size=1, max_size=16), INT32)
def test_requantize_per_column(columns, zero_point):
    xs, mults, shifts = (np.array(values, dtype=np.int64) for values in zip(*columns, strict=True))
    got = arith.requantize(xs, mults, shifts, zero_point).tolist()
    assert got == [exact_requantize(x, m, s, zero_point) for x, m, s in columns]
