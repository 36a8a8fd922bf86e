"""Configurations: what a back end cannot build is rejected when the Config is made."""

from __future__ import annotations

import pytest

from braze.isa.config import MAX_DRAM_BYTES, MAX_QUEUE_DEPTH, MIN_DRAM_BYTES, PRESETS, Config
from braze.isa.errors import ConfigError


@pytest.mark.parametrize(("spec", "fragment"), [
    ("default:dram_bytes=1000", "dram_bytes=1000 must be a power of two"),
    ("tiny:dram_bytes=1000000", "dram_bytes=1000000 must be a power of two"),
    (f"tiny:dram_bytes={MIN_DRAM_BYTES // 2}", f"from {MIN_DRAM_BYTES}"),
    # Found by braze bench fuzz: 4 GiB was accepted, and building its simulated memory hung.
    (f"tiny:dram_bytes={1 << 32}", f"to {MAX_DRAM_BYTES}"),
    ("tiny:mem_latency=100000", "mem_latency=100000 exceeds"),
    ("tiny:queue_depth=6", "queue_depth=6 must be a power of two"),
    (f"tiny:queue_depth={2 * MAX_QUEUE_DEPTH}", f"no larger than {MAX_QUEUE_DEPTH}"),
    (f"default:token_depth={1 << 20}", f"token_depth={1 << 20} must be a power of two no larger"),
])
def test_unbuildable_configs_are_rejected(spec, fragment):
    """Defect 3: a dram_bytes the simulated memories cannot hold failed later, with a traceback."""
    with pytest.raises(ConfigError, match=fragment.replace("*", r"\*")):
        Config.parse(spec)


def test_the_limits_themselves_are_accepted():
    assert Config.parse(f"tiny:dram_bytes={MIN_DRAM_BYTES}").dram_bytes == MIN_DRAM_BYTES
    limits = Config.parse(f"tiny:dram_bytes={MAX_DRAM_BYTES},mem_latency={1 << 16}")
    assert (limits.dram_bytes, limits.mem_latency) == (MAX_DRAM_BYTES, 1 << 16)
    deepest = Config.parse(f"tiny:queue_depth={MAX_QUEUE_DEPTH},token_depth={MAX_QUEUE_DEPTH}")
    assert (deepest.queue_depth, deepest.token_depth) == (MAX_QUEUE_DEPTH, MAX_QUEUE_DEPTH)
    assert all(MIN_DRAM_BYTES <= config.dram_bytes for config in PRESETS.values())


def test_assembler_constants_follow_the_config():
    config = Config.parse("default:rows=4,cols=16")
    constants = config.asm_constants()
    assert (constants["ROWS"], constants["COLS"], constants["SPAD_ROWS"], constants["ACC_ROWS"]) == \
        (4, 16, config.spad_rows, config.acc_rows)
    assert constants["DRAM_BYTES"] == config.dram_bytes and "NAME" not in constants


@pytest.mark.parametrize("value", [0, 3, 16])
def test_load_overlap_must_be_a_small_power_of_two(value):
    problem = "(positive|a power of two no larger than 8)"
    with pytest.raises(ConfigError, match=f"load_overlap={value} must be {problem}"):
        Config.parse(f"default:load_overlap={value}")


def test_load_overlap_joins_the_identity_only_when_not_1():
    """Caches key on to_json(): at load_overlap=1 it is what it was before the field existed."""
    serial = Config.preset("default").replace(load_overlap=1)
    assert "load_overlap" not in serial.to_dict()
    assert Config.from_dict(serial.to_dict()) == serial
    overlapped = serial.replace(load_overlap=4)
    assert overlapped.to_dict()["load_overlap"] == 4
    assert overlapped.to_json() != serial.to_json()
    assert Config.from_dict(overlapped.to_dict()) == overlapped


def test_presets_overlap_loads_except_tiny():
    """default and large overlap 4 LOADs (convolutions are LOAD-latency-bound); tiny, the small FPGA
    preset, keeps the one-LOAD engine."""
    assert [Config.preset(name).load_overlap for name in ("tiny", "default", "large")] == [1, 4, 4]


@pytest.mark.parametrize("field", ["weight_preload", "epilogue_overlap", "matmul_overlap", "store_ahead",
                                   "redirect_stage", "fmax_registers", "fetch_skid", "vector_stage"])
@pytest.mark.parametrize("value", [-1, 2, 8])
def test_switches_are_0_or_1(field, value):
    with pytest.raises(ConfigError, match=rf"{field}={value} must be 0 \(off\) or 1"):
        Config.parse(f"default:{field}={value}")


@pytest.mark.parametrize("value", [-1, 3, 8])
def test_dispatch_stages_are_0_1_or_2(value):
    with pytest.raises(ConfigError, match=rf"dispatch_stage={value} must be 0 \(off\), 1 .* or 2"):
        Config.parse(f"default:dispatch_stage={value}")
    assert Config.parse("default:dispatch_stage=2").dispatch_stage == 2


@pytest.mark.parametrize("field", ["weight_preload", "epilogue_overlap", "matmul_overlap", "dispatch_stage",
                                   "store_ahead", "redirect_stage", "fmax_registers", "fetch_skid",
                                   "vector_stage"])
def test_switches_join_the_identity_only_when_on(field):
    """Off (0), a switch is absent from to_dict/to_json, so the cache keys, Verilator builds and
    learned-model rows of a configuration without it are those from before it existed; on, present.
    default and large ship with the four overlap switches on (the Fmax switches off), tiny with none."""
    for name in ("tiny", "default", "large"):
        preset = Config.preset(name)
        on = name != "tiny" and field not in ("dispatch_stage", "redirect_stage", "fmax_registers",
                                              "fetch_skid", "vector_stage")
        assert getattr(preset, field) == int(on) and (field in preset.to_dict()) == on
    switched = Config.parse(f"tiny:weight_preload=1,{field}=1")       # matmul_overlap needs the preload
    assert switched.to_dict()[field] == 1
    assert Config.from_dict(switched.to_dict()) == switched
    assert switched.replace(name="tiny").to_json() != Config.preset("tiny").to_json()
    # Off again (matmul_overlap off too when the preload is): absent.
    off = Config.parse(f"large:{field}=0" + (",matmul_overlap=0" if field == "weight_preload" else ""))
    assert getattr(off, field) == 0 and field not in off.to_dict()


