"""``braze run``, ``braze compile`` and ``braze bench model`` on small models (golden device)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_models import conv_model

from braze import cli
from braze.isa import Instruction, Opcode, assemble, decode_program
from braze.sw.compiler.frontend import evaluate
from braze.sw.runtime.session import InferenceSession


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_CACHE_DIR", str(tmp_path / "kernels"))
    rng = np.random.default_rng(0)
    onnx.save(conv_model(7), tmp_path / "conv.onnx")
    np.save(tmp_path / "calib.npy", rng.normal(size=(2, 1, 8, 8)).astype(np.float32))
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 1, 8, 8)).astype(np.float32))
    return tmp_path


def _kernel_rows(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.startswith("k") and "_" in line.split()[0]]


def test_run_prints_outputs_and_the_counter_table(files, capsys):
    args = [str(files / "conv.onnx"), "--config", "tiny", "--calibrate", str(files / "calib.npy"),
            "--input", str(files / "x.npy")]
    assert cli.main(["run", *args]) == 0
    fused = capsys.readouterr().out
    assert fused.startswith("y: float32[2, 5]")
    calibration = np.load(files / "calib.npy")
    session = InferenceSession(str(files / "conv.onnx"), config="tiny", calibration=calibration)
    x = np.load(files / "x.npy")
    expected = evaluate(session.graph_before, {"x": x})["y"]
    assert np.array2string(expected, threshold=200, precision=5) in fused
    assert cli.main(["run", *args, "--no-fuse"]) == 0
    unfused = capsys.readouterr().out
    assert len(_kernel_rows(unfused)) == len(_kernel_rows(fused)) + 2
    assert "PE util" in fused and "host overhead" in fused


def test_compile_writes_assembly_binaries_and_manifest(files, capsys):
    out = files / "out"
    assert cli.main(["compile", str(files / "conv.onnx"), "--config", "tiny", "--calibrate",
                     str(files / "calib.npy"), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["name"] == "tiny" and manifest["kernels"]
    for entry in manifest["kernels"]:
        binary = decode_program((out / entry["bin"]).read_bytes())
        assembled = assemble((out / entry["asm"]).read_text())
        assert binary == assembled + [Instruction.make(Opcode.HALT)]
        assert len(assembled) == entry["instructions"]
    assert "wrote" in capsys.readouterr().out


def test_bad_model_file_is_a_clear_error(files, capsys):
    (files / "bad.onnx").write_bytes(b"not a model")
    assert cli.main(["run", str(files / "bad.onnx")]) == 2
    assert "bad.onnx" in capsys.readouterr().err
    np.save(files / "wrong.npy", np.zeros((3, 3), np.float32))
    assert cli.main(["run", str(files / "conv.onnx"), "--config", "tiny", "--calibrate",
                     str(files / "calib.npy"), "--input", str(files / "wrong.npy")]) == 2
    assert "input 'x': expected shape [2, 1, 8, 8], got [3, 3]" in capsys.readouterr().err


def test_bench_model_reports_compile_times_and_ratios(files, capsys):
    result = files / "bench.json"
    assert cli.main(["bench", "model", str(files / "conv.onnx"), "--config", "tiny", "--calibrate",
                     str(files / "calib.npy"), "--input", str(files / "x.npy"), "--json", str(result)]) == 0
    text = capsys.readouterr().out
    assert "compile cold" in text and "conv" in text
    (row,) = json.loads(result.read_text())
    assert row["cycles_fused"] < row["cycles_unfused"]
    assert row["dma_bytes_fused"] < row["dma_bytes_unfused"]
    assert row["compile_cold_ms"] > 0 and row["compile_cached_ms"] > 0
    assert [k["kernel"].split("_")[1] for k in row["kernels"]] == ["conv2d", "maxpool2d", "conv2d", "gemm"]
