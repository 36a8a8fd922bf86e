"""The ``braze`` command line.

Each subcommand is a function registered with :func:`command`, which also declares its
arguments; :func:`main` builds the parser from the registry.  Adding a subcommand is
adding one decorated function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from braze.isa.errors import BrazeError


@dataclasses.dataclass(frozen=True)
class Argument:
    """Positional and keyword arguments of one ``ArgumentParser.add_argument`` call."""

    names: tuple[str, ...]
    options: dict[str, Any]


def arg(*names: str, **options: Any) -> Argument:
    return Argument(names, options)


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
         arg("-o", "--output", type=Path, help="binary to write (default: SOURCE with suffix .bin)"))
def _asm(args: argparse.Namespace) -> int:
    from braze.isa.asm import assemble
    from braze.isa.encoding import encode_program

    program = assemble(args.source.read_text(), filename=str(args.source))
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

    sys.stdout.write(disassemble(args.binary.read_bytes(), offsets=args.offsets))
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


@command("demo", "run the sample fused-GEMM kernel on the reference model",
         arg("--config", default="default", help="preset name, PRESET:field=value,... or JSON"),
         arg("--seed", type=int, default=0, help="seed of the random inputs"))
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
    if args.lint:
        print(f"verilator lint: clean ({result.seconds['lint']:.1f} s)")
    if result.synth_report is not None:
        print(synth_table(result.synth_report))
        print(f"wrote {result.synth}")
    return 0


@command("verify", "differential verification: random programs on the reference model and a device",
         arg("--device", default="golden", help="device under test, a back end of braze.sim.device.DEVICES"),
         arg("--config", default="tiny", help="preset name, PRESET:field=value,... or JSON (default: tiny)"),
         arg("--programs", type=int, default=20, help="number of random programs (default: 20)"),
         arg("--seed", type=int, default=0, help="program i is generated from seed SEED+i (default: 0)"),
         arg("--size", type=int, default=None, help="tiles of work per program (default: 8)"),
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
    if args.replay is not None:
        program, mismatches = verify.replay(args.replay, factory)
        print(f"replayed {args.replay}: {len(program.instructions)} instructions on the {args.device} "
              f"device, config {program.config.name!r}: {len(mismatches)} mismatch(es)")
        for mismatch in mismatches:
            print(f"  {mismatch.kind}: {mismatch.detail}")
        return 1 if mismatches else 0
    report = verify.verify(factory, Config.parse(args.config), programs=args.programs, seed=args.seed,
                           size=args.size or DEFAULT_SIZE, reproducer_dir=args.reproducers)
    print(report.summary())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:   # --help, or a usage error argparse has already printed
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return COMMANDS[args.command].run(args)
    except BrokenPipeError:
        # The reader went away (``braze isa-doc | head``): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (BrazeError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc) if not isinstance(exc, OSError) or not exc.filename else \
            f"{exc.filename}: {exc.strerror}"
        print(f"braze: error: {message}", file=sys.stderr)
        return 2
