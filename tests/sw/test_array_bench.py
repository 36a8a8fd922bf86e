"""``braze bench array``: the repricing of MATMULs, the ceilings and the fission bounds it reports."""

import re

import pytest

from braze import cli
from braze.isa import Config, Instruction, Opcode
from braze.isa.timing import instruction_cycles, schedule
from braze.sw.compiler.kernels import gemm, link
from braze.sw.dse import array_bench

# The studies reprice MATMULs one at a time: the presets without their MATMUL overlap (study_config).
DEFAULT = array_bench.study_config(Config.preset("default"))
LARGE = array_bench.study_config(Config.preset("large"))


def _matmul(m: int, k: int, n: int) -> Instruction:
    return Instruction.make(Opcode.MATMUL, acc=0, a=0, b=1024, a_stride=m, m=m, n=n, k=k)


def test_repricing_a_matmul_moves_the_program_by_the_difference():
    program = [_matmul(4, 16, 8), Instruction.make(Opcode.HALT)]
    short = array_bench.price_program(program, DEFAULT, lambda insn, config: 5)
    long = array_bench.price_program(program, DEFAULT, lambda insn, config: 50)
    assert long - short == 45
    assert array_bench.price_program(program, DEFAULT, array_bench.PRICES["ws"]) == \
        schedule(program, DEFAULT).cycles


def test_repricing_refuses_a_machine_with_two_matmuls_in_flight():
    shipped = Config.preset("default")
    assert shipped.matmul_overlap and not DEFAULT.matmul_overlap and not DEFAULT.weight_preload
    program = [_matmul(4, 16, 8), Instruction.make(Opcode.HALT)]
    with pytest.raises(ValueError, match="matmul_overlap=1"):
        array_bench.price_program(program, shipped, array_bench.PRICES["free"])
    assert array_bench.price_program(program, shipped, array_bench.PRICES["ws"]) == \
        schedule(program, shipped).cycles


def test_ws_pricing_reproduces_the_timing_model_on_a_compiled_gemm():
    program = gemm(DEFAULT, 16, 40, 24).program()
    assert array_bench.price_program(program, DEFAULT, array_bench.PRICES["ws"]) == \
        schedule(program, DEFAULT).cycles


def test_one_port_counts_operand_bytes_through_the_read_port():
    # 1x64 A and 64x8 B are 64 + 512 bytes: 72 rows of 8 bytes on default, 36 of 16 on large.
    assert array_bench.PRICES["one_port"](_matmul(1, 64, 8), DEFAULT) == 72
    assert array_bench.PRICES["one_port"](_matmul(1, 64, 8), LARGE) == 36
    assert array_bench.PRICES["one_port"](_matmul(1, 1, 1), DEFAULT) == 1


@pytest.mark.parametrize("config", [DEFAULT, LARGE], ids=lambda config: config.name)
@pytest.mark.parametrize("shape", [(1, 64, 8), (1, 9, 3), (16, 16, 16), (64, 9, 8), (7, 100, 5)])
def test_the_prices_are_ordered_below_ws(config, shape):
    """one_port is a lower bound of the WS instruction, and overlapped lies between them."""
    m, k, n = shape
    insn = _matmul(m, k, min(n, config.cols))
    one_port, overlapped, ws = (array_bench.PRICES[name](insn, config)
                                for name in ("one_port", "overlapped", "ws"))
    assert 1 <= one_port <= overlapped < ws == instruction_cycles(insn, config)


def test_a_shape_study_starts_from_the_compilers_pick():
    study = array_bench.study_shape(DEFAULT, (1, 64, 10))
    kernel = gemm(DEFAULT, 1, 64, 10)
    assert study.pick_cycles == kernel.predicted_cycles
    assert study.matmuls == sum(insn.opcode is Opcode.MATMUL for insn in kernel.program())
    assert study.candidates >= 1
    # The pick is one of the candidates, so the best candidate is no slower; a free array is faster still.
    assert study.best["ws"] <= study.pick_cycles
    assert study.best["free"] < study.best["ws"]
    assert study.ceiling("free") == study.pick_cycles / study.best["free"]


def test_fission_bounds_come_from_the_linked_kernels():
    large = Config.preset("large")        # as shipped, as `braze bench array` studies it
    fission = array_bench.study_fission(large)
    kernels = array_bench._independent_gemms(large, (16, 16, 16), 4)
    operands = [(op.addr, op.addr + op.nbytes) for kernel in kernels for op in kernel.operands.values()]
    operands.sort()
    assert all(end <= start for (_, end), (start, _) in zip(operands, operands[1:], strict=False)), \
        "the four GEMMs must not share memory"
    busy = schedule(link(kernels), large).busy
    assert fission.sequential == schedule(link(kernels), large).cycles
    assert fission.fissioned_bound >= busy["load_busy"]
    assert fission.together_bound >= busy["vector_busy"] + busy["array_busy"]
    assert fission.fissioned_bound <= fission.together_bound < fission.sequential
    with pytest.raises(ValueError, match="2x2 split has 4 sub-arrays, not 3"):
        array_bench.study_fission(large, count=3)


def test_a_network_study_sums_its_kernels_priced_each_way():
    network = array_bench.study_network("gemm:1x64x10", DEFAULT)
    kernel = gemm(DEFAULT, 1, 64, 10, bias=True, requant=True)
    assert network.kernels == 1
    assert network.cycles["ws"] == kernel.predicted_cycles
    free = array_bench.price_program(kernel.program(), DEFAULT, lambda insn, config: 1)
    assert network.cycles["free"] == free
    assert network.ceiling("free") > 1


def test_measuring_on_the_golden_device_agrees_with_the_prediction():
    (measurement,) = array_bench.measure_picks("golden", DEFAULT, [(1, 64, 10)])
    assert measurement.outputs_equal
    assert measurement.measured == measurement.predicted == gemm(DEFAULT, 1, 64, 10).predicted_cycles
    assert measurement.array_busy_measured == measurement.array_busy_predicted == \
        array_bench.study_shape(DEFAULT, (1, 64, 10)).busy["array_busy"]


def test_bench_ends_with_one_summary_line(capsys):
    assert cli.main(["bench", "array", "--presets", "default", "--shapes", "1x64x10,16x16x16,64x9x8",
                     "--network", "none"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"array: best_vs_ws_small_worst=n/a fission_speedup=n/a area_overhead_pct=n/a "
                        r"mismatches=n/a one_port_small_worst=\d+\.\d\d free_small_worst=\d+\.\d\d "
                        r"free_m1_worst=\d+\.\d\d fission_ceiling=\d+\.\d\d", lines[-1])
    free_m1 = float(re.search(r"free_m1_worst=([\d.]+)", lines[-1]).group(1))
    study = array_bench.study_shape(DEFAULT, (1, 64, 10))
    assert free_m1 == pytest.approx(study.ceiling("free"), abs=0.005)


@pytest.mark.parametrize("argv, fragment", [
    (["--shapes", "1x2"], "'1x2' is not MxKxN"),
    (["--shapes", "64x9x8"], "M = 1"),
    (["--presets", "nope"], "no preset named 'nope'"),
    (["--batch", "0"], "argument --batch: 0 must be at least 1"),
    (["--network", "gemm:1x0x3", "--shapes", "1x8x8"], "gemm:MxKxN with positive M, K, N"),
])
def test_bad_arguments_are_one_line(argv, fragment, capsys):
    assert cli.main(["bench", "array", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
