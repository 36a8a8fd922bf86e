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
    assert captured.err == f"braze: error: {source}:2:1: matmul is missing required fields " \
                           "'acc', 'a', 'b', 'a_stride', 'k'\n"
    assert "Traceback" not in captured.err
    assert not (tmp_path / "bad.bin").exists()


def test_illegal_binary_and_missing_file(tmp_path, capsys):
    binary = tmp_path / "bad.bin"
    binary.write_bytes(assemble_bytes("halt") + bytes(16))
    assert cli.main(["disasm", str(binary)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("braze: error: instruction at byte 0x10") and "illegal_opcode" in err
    assert len(err.splitlines()) == 1

    missing = tmp_path / "missing.s"
    assert cli.main(["asm", str(missing)]) == 2
    assert capsys.readouterr().err == f"braze: error: {missing}: No such file or directory\n"


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
    assert "usage: braze" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err
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
    assert failed.stderr.startswith("braze: error: ") and len(failed.stderr.splitlines()) == 1
