"""The main job, for now: assemble the sample fused-GEMM kernel, run it on the
reference model, check it against numpy, and print the result and the counters.
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np

from braze.isa import COUNTERS, Config, Memory, parse_snapshot
from braze.isa.arith import epilogue
from braze.isa.asm import assemble, disassemble
from braze.isa.encoding import Activation, encode_program
from braze.isa.model import Machine

KERNEL = "fused_gemm.s"


def build_kernel(config: Config) -> tuple[str, list]:
    source = resources.files("braze").joinpath("examples", KERNEL).read_text()
    prelude = f".equ ROWS, {config.rows}\n.equ COLS, {config.cols}\n"
    return source, assemble(prelude + source, filename=KERNEL)


def run_demo(config: Config, *, seed: int = 0, verbose: bool = True) -> dict:
    """Run the sample kernel; returns what it printed as data (used by the tests)."""
    source, program = build_kernel(config)
    matmul = next(insn for insn in program if insn.format.mnemonic == "matmul")
    load_a, load_b, load_params = program[0], program[4], program[5]
    store = next(insn for insn in program if insn.format.mnemonic == "store")
    snapshot = next(insn for insn in program if insn.format.mnemonic == "counters")
    m, n, k = matmul.m, matmul.n, matmul.k

    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    bias = rng.integers(-2000, 2000, size=n, dtype=np.int32)
    mult = rng.integers(1 << 14, 1 << 15, size=n, dtype=np.int32)
    shift = np.full(n, 24, dtype=np.int32)

    machine = Machine(config)
    machine.write_dram(0, encode_program(program))
    machine.write_dram(load_a.dram, a.tobytes())
    machine.write_dram(load_b.dram, b.tobytes())
    machine.write_dram(load_params.dram, np.stack([bias, mult, shift]).astype("<i4").tobytes())
    result = machine.run(0)

    out = np.frombuffer(machine.read_dram(store.dram, m * n), dtype=np.int8).reshape(m, n)
    counters = parse_snapshot(machine.read_dram(snapshot.dram, len(COUNTERS) * 8))
    expected = epilogue(a.astype(np.int64) @ b.astype(np.int64), bias=bias, mult=mult, shift=shift,
                        act=Activation.RELU, out=Memory.SPAD)
    matches = bool(np.array_equal(out, expected))

    if verbose:
        macs = counters["macs"]
        busy = counters["array_busy"]
        print(f"Braze demo: fused GEMM kernel on the reference model, config {config.name!r} "
              f"({config.rows}x{config.cols} array)")
        print(f"  OUT = relu(requantize(A[{m}x{k}] @ B[{k}x{n}] + bias))  — {len(program)} instructions")
        print()
        print(disassemble(program, offsets=True))
        print()
        print("Result (int8):")
        print(np.array2string(out, max_line_width=120))
        print(f"Matches numpy: {'yes' if matches else 'NO'}")
        print()
        print("Counters at the snapshot (exact ones must equal the RTL's; "
              "cycle counts are the timing model's prediction):")
        width = max(len(spec.name) for spec in COUNTERS)
        for spec in COUNTERS:
            value = counters[spec.name]
            if value or spec.exact:
                kind = "exact" if spec.exact else "model"
                print(f"  {spec.name:<{width}}  {value:>10}  {kind}")
        if busy:
            print(f"PE utilisation while busy: {macs / (busy * config.rows * config.cols):.1%}; "
                  f"over the whole run: {macs / (counters['cycles'] * config.rows * config.cols):.1%}")
        print(f"Total cycles (timing model): {result.cycles}")
    return {"out": out, "expected": expected, "matches": matches, "counters": counters,
            "source": source, "program": program}


def main(args: argparse.Namespace | None = None) -> int:
    config = Config.parse(getattr(args, "config", None) or "default")
    outcome = run_demo(config, seed=getattr(args, "seed", 0) or 0)
    return 0 if outcome["matches"] else 1
