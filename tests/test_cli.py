"""The ``braze`` command line, through ``main([...])`` and once as a real ``python -m braze``."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from braze import cli
from braze.isa.asm import assemble_bytes
from braze.isa.config import PRESETS
from braze.isa.doc import isa_markdown
from braze.isa.encoding import encode_program

SOURCE = """\
.equ N, 4
    load mem=spad addr=0 rows=N len=N dram=0x1000 stride=N push_next
    matmul acc=0 a=0 b=0 a_stride=N m=N n=N k=N pop_prev push_next
    store mem=acc addr=0 rows=N len=N dram=end stride=4*N pop_prev
end: halt
"""


def test_asm_writes_bin_next_to_source_and_disasm_reads_it(tmp_path, capsys):
    source = tmp_path / "prog.s"
    source.write_text(SOURCE)
    assert cli.main(["asm", str(source)]) == 0
    binary = tmp_path / "prog.bin"
    assert binary.read_bytes() == assemble_bytes(SOURCE)
    assert "4 instructions" in capsys.readouterr().out

    assert cli.main(["disasm", str(binary)]) == 0
    text = capsys.readouterr().out
    assert assemble_bytes(text) == binary.read_bytes()
    assert len(text.splitlines()) == 4

    assert cli.main(["disasm", "--offsets", str(binary)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3].endswith("# 0x0030") and lines[3].startswith("halt")


def test_asm_output_option(tmp_path, capsys):
    source = tmp_path / "prog.s"
    source.write_text(SOURCE)
    output = tmp_path / "out" / "kernel.img"
    output.parent.mkdir()
    assert cli.main(["asm", str(source), "-o", str(output)]) == 0
    assert output.read_bytes() == assemble_bytes(SOURCE)
    assert not (tmp_path / "prog.bin").exists()


def test_assembly_error_is_one_line_with_status_2(tmp_path, capsys):
    source = tmp_path / "bad.s"
    source.write_text("halt\nmatmul m=1 n=65\n")
    assert cli.main(["asm", str(source)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"braze asm: error: {source}:2:1: matmul is missing required fields " \
                           "'acc', 'a', 'b', 'a_stride', 'k'\n"
    assert "Traceback" not in captured.err
    assert not (tmp_path / "bad.bin").exists()


def test_illegal_binary_and_missing_file(tmp_path, capsys):
    binary = tmp_path / "bad.bin"
    binary.write_bytes(assemble_bytes("halt") + bytes(16))
    assert cli.main(["disasm", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("braze disasm: error: instruction at byte 0x10") and "illegal_opcode" in err
    assert len(err.splitlines()) == 1

    missing = tmp_path / "missing.s"
    assert cli.main(["asm", str(missing)]) == 2
    assert capsys.readouterr().err == f"braze asm: error: {missing}: No such file or directory\n"


def test_debug_shows_the_traceback(tmp_path, capsys):
    source = tmp_path / "bad.s"
    source.write_text("hlat\n")
    for argv in (["--debug", "asm", str(source)], ["asm", "--debug", str(source)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "AsmError" in err and "did you mean 'halt'" in err


def test_configs_table_and_json(capsys):
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "rows", "cols"]
    for line, (name, config) in zip(lines[1:], PRESETS.items(), strict=True):
        assert line.split() == [name, str(config.rows), str(config.cols), str(config.spad_bytes),
                                str(config.spad_rows), str(config.spad_banks), str(config.acc_bytes),
                                str(config.acc_rows), str(config.acc_banks), str(config.dma_bus_bits)]
    assert cli.main(["configs", "--json"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert list(presets) == list(PRESETS)
    for name, config in PRESETS.items():
        derived = {"spad_rows": config.spad_rows, "acc_rows": config.acc_rows}
        assert presets[name] == config.to_dict() | derived


def test_isa_doc_prints_the_document(capsys):
    assert cli.main(["isa-doc"]) == 0
    assert capsys.readouterr().out == isa_markdown()


def test_usage_errors_and_help(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "braze: error: the following arguments are required: COMMAND " \
                                      "(see braze --help)\n"
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("braze: error: argument COMMAND: invalid choice") and len(err.splitlines()) == 1
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_subcommands_register_in_one_table(capsys):
    calls = []

    @cli.command("test-echo", "echo for the test", cli.arg("word"))
    def _echo(args):
        calls.append(args.word)
        return 7

    try:
        assert cli.main(["test-echo", "hello"]) == 7
        assert calls == ["hello"]
        with pytest.raises(ValueError, match="registered twice"):
            cli.command("test-echo", "again")(_echo)
    finally:
        del cli.COMMANDS["test-echo"]


def test_demo_passes_its_options(monkeypatch):
    """``braze demo`` hands its options to ``braze.demo.main`` (replaced here by a stand-in)."""
    import braze

    seen = []
    stand_in = types.ModuleType("braze.demo")
    stand_in.main = lambda args: seen.append((args.config, args.seed)) or 0
    monkeypatch.setitem(sys.modules, "braze.demo", stand_in)
    monkeypatch.setattr(braze, "demo", stand_in, raising=False)
    assert cli.main(["demo", "--config", "tiny", "--seed", "3"]) == 0
    assert seen == [("tiny", 3)]


def test_python_dash_m_braze(tmp_path):
    source = tmp_path / "prog.s"
    source.write_text(SOURCE)
    run = [sys.executable, "-m", "braze"]
    subprocess.run(run + ["asm", str(source)], check=True, capture_output=True)
    result = subprocess.run(run + ["disasm", str(tmp_path / "prog.bin")], check=True, capture_output=True,
                            text=True)
    assert assemble_bytes(result.stdout) == assemble_bytes(SOURCE)
    failed = subprocess.run(run + ["disasm", str(source)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith("braze disasm: error: ") and len(failed.stderr.splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# One error boundary (issue 10, defect 3): every user error is one line naming the command, exit 2.

def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"braze {command}: error: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("argv", "command", "fragments"), [
    # a configuration no back end can build (the first used to be a traceback in progen)
    (["verify", "--config", "default:dram_bytes=1000", "--programs", "1"], "verify",
     ["dram_bytes=1000", "power of two"]),
    # arguments out of range: the argument, the value and the range
    (["verify", "--programs", "-1"], "verify", ["argument --programs", "-1", "at least 0"]),
    (["verify", "--size", "0"], "verify", ["argument --size", "0 is out of range"]),
    (["verify", "--size", "100000", "--programs", "1"], "verify", ["size=100000", "1 to 256"]),
    (["verify", "--stall", "nan"], "verify", ["argument --stall", "nan"]),
    (["verify", "--seed", "x"], "verify", ["argument --seed", "'x' is not an integer"]),
    (["run", "model.onnx", "--threshold", "nan"], "run", ["argument --threshold", "nan", "[0, 1)"]),
    (["compile", "model.onnx", "-o", "out", "--threshold", "inf"], "compile", ["argument --threshold"]),
    (["demo", "--batch", "0"], "demo", ["argument --batch"]),
    (["hpm", "show", "--count", "0"], "hpm", ["argument --count"]),
    (["asm", "prog.s", "-D", "N"], "asm", ["argument -D/--define", "NAME=VALUE"]),
    # usage errors of a command and of a bench target's own parser
    (["verify", "--bogus"], "verify", ["unrecognized arguments: --bogus"]),
    (["asm"], "asm", ["required: source"]),
    (["bench", "sim", "--runs", "0"], "bench sim", ["--runs"]),
    (["bench", "model", "--frobnicate"], "bench model", ["unrecognized arguments"]),
    (["bench", "dataflow", "--warmup", "1"], "bench dataflow", ["--warmup"]),
    (["bench", "compile", "--cost-models", "magic"], "bench compile", ["--cost-models", "analytic, learned"]),
    (["bench", "kernels", "--frobnicate"], "bench kernels", ["unrecognized arguments"]),
    (["bench", "zoo", "--batches", "0"], "bench zoo", ["argument --batches", "at least 1"]),
    (["bench", "attention", "--d", "10"], "bench attention", ["--d 10", "heads dividing d"]),
])
def test_bad_arguments_are_one_line(argv, command, fragments, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = _one_error_line(capsys, command)
    for fragment in fragments:
        assert fragment in err


def test_an_unbuildable_memory_size_fails_before_any_build(tmp_path, monkeypatch, capsys):
    """Defect 3: dram_bytes not a power of two failed the Verilator build, leaving a folder in the cache."""
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["verify", "--device", "verilator", "--config", "tiny:dram_bytes=1000000"]) == 2
    assert "dram_bytes=1000000" in _one_error_line(capsys, "verify")
    assert not (tmp_path / "cache").exists()


def test_a_source_that_is_not_utf8_is_located(tmp_path, capsys):
    source = tmp_path / "latin1.s"
    source.write_bytes("halt\n# caf\xe9\n".encode("latin-1"))
    assert cli.main(["asm", str(source)]) == 2
    assert f"{source}:2:6: byte 0xe9 is not UTF-8" in _one_error_line(capsys, "asm")


def test_empty_programs_are_errors(tmp_path, capsys):
    binary = tmp_path / "empty.bin"
    binary.write_bytes(b"")
    assert cli.main(["disasm", str(binary)]) == 2
    assert f"{binary}: empty file" in _one_error_line(capsys, "disasm")
    source = tmp_path / "comments.s"
    source.write_text("# nothing here\n")
    assert cli.main(["asm", str(source)]) == 2
    assert "no instructions" in _one_error_line(capsys, "asm")
    assert not (tmp_path / "comments.bin").exists()


def test_a_load_needs_its_external_address(tmp_path, capsys):
    source = tmp_path / "load.s"
    source.write_text("load mem=spad addr=0 rows=1 len=1\nhalt\n")
    assert cli.main(["asm", str(source)]) == 2
    assert "'dram', 'stride' (required without 'zero')" in _one_error_line(capsys, "asm")


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(capsys):
    @cli.command("test-crash", "raises an exception that is not a BrazeError")
    def _crash(args):
        raise KeyError("internal")

    try:
        assert cli.main(["test-crash"]) == cli.EXIT_BUG
    finally:
        del cli.COMMANDS["test-crash"]
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert "braze test-crash: internal error" in err and "this is a bug in Braze; please report it" in err


# ---------------------------------------------------------------------------------------------------
# braze asm --config / -D (issue 10, defect 6)

def test_the_shipped_sample_assembles_with_a_config(tmp_path, capsys):
    from importlib import resources

    from braze.demo import build_kernel
    from braze.isa.config import Config

    sample = resources.files("braze").joinpath("examples", "fused_gemm.s")
    output = tmp_path / "fused_gemm.bin"
    assert cli.main(["asm", str(sample), "-o", str(output)]) == 2
    assert "undefined symbol 'ROWS'" in _one_error_line(capsys, "asm")
    for config in ("default", "tiny", "large"):
        assert cli.main(["asm", str(sample), "-o", str(output), "--config", config]) == 0
        _, program = build_kernel(Config.parse(config))
        assert output.read_bytes() == encode_program(program)
    capsys.readouterr()
    # -D defines more constants and overrides the configuration's.
    assert cli.main(["asm", str(sample), "-o", str(output), "-D", "ROWS=8", "-D", "COLS=0x10"]) == 0
    _, program = build_kernel(Config.parse("default:cols=16"))
    assert output.read_bytes() == encode_program(program)
    assert cli.main(["asm", str(sample), "-o", str(output), "--config", "tiny", "-D", "COLS=8"]) == 0
    assert output.read_bytes() == encode_program(build_kernel(Config.parse("tiny:cols=8"))[1])


def test_a_predefined_constant_cannot_be_redefined(tmp_path, capsys):
    source = tmp_path / "n.s"
    source.write_text(".equ ROWS, 2\nhalt\n")
    assert cli.main(["asm", str(source), "--config", "tiny"]) == 2
    assert f"{source}:1:6: duplicate constant 'ROWS': predefined" in _one_error_line(capsys, "asm")
