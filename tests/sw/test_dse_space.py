"""Design spaces: the issue's names mapped onto Config fields, values validated against its rules."""

from __future__ import annotations

import pytest

from braze.isa import Config
from braze.sw.dse import SpaceError, parse_space


def test_the_issues_space_maps_onto_config_fields():
    space = parse_space("rows=4..32,cols=4..32,spad_kib=16..256,bus_bits=64..256")
    assert [(p.name, p.values) for p in space.parameters] == [
        ("rows", (4, 8, 16, 32)), ("cols", (4, 8, 16, 32)), ("spad_kib", (16, 32, 64, 128, 256)),
        ("bus_bits", (64, 128, 256))]
    configs = space.configs()
    # rows <= cols leaves 10 of the 16 array shapes; every memory and bus combination is valid.
    assert len(configs) == 10 * 5 * 3 and space.invalid == 6 * 5 * 3
    assert all(c.rows <= c.cols for c in configs)
    config = space.config({"rows": 8, "cols": 16, "spad_kib": 64, "bus_bits": 128})
    assert (config.rows, config.cols, config.spad_bytes, config.dma_bus_bits) == (8, 16, 64 * 1024, 128)
    # Unvaried fields are the base's; the name is the point's.
    default = Config.preset("default")
    assert (config.acc_bytes, config.queue_depth, config.mem_latency) == \
        (default.acc_bytes, default.queue_depth, default.mem_latency)
    assert config.name == "dse_r8_c16_s64_b128"
    assert space.point(config) == {"rows": 8, "cols": 16, "spad_kib": 64, "bus_bits": 128}


def test_lists_single_values_and_another_base():
    space = parse_space("cols=8|32, acc_kib=4, bus_bits=64", "tiny")
    assert [c.cols for c in space.configs()] == [8, 32]
    assert {(c.acc_bytes, c.dma_bus_bits, c.rows, c.queue_depth) for c in space.configs()} == \
        {(4096, 64, 4, 4)}


@pytest.mark.parametrize("text, message", [
    ("rows=3..32", "'rows=3..32': 3 is not a possible rows (must be a power of two from 2 to 64)"),
    ("rows=4..128", "128 is not a possible rows"),
    ("bus_bits=32..128", "32 is not a possible bus_bits (must be one of 64, 128, 256)"),
    ("bus_bits=96", "96 is not a possible bus_bits"),
    ("queue_depth=4..512", "512 is not a possible queue_depth (must be a power of two from 1 to 256)"),
    ("rows=16..4", "'rows=16..4': the range is empty (16 > 4)"),
    ("spad=16..64", "unknown parameter 'spad'; parameters are rows, cols, spad_kib"),
    ("rows=4..8,rows=8", "parameter 'rows' is given twice"),
    ("rows", "'rows' is not of the form name=LO..HI"),
    ("rows=four", "'rows=four': 'four' is not an integer"),
    ("", "no parameters given"),
    ("rows=32,cols=4..16", "has no valid configuration over 'default'"),
])
def test_bad_spaces_are_one_line_errors_naming_the_item(text, message):
    with pytest.raises(SpaceError) as error:
        parse_space(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_cross_field_rule_leaves_combinations_out_instead_of_failing():
    # 512 KiB is 131072 rows of 4 bytes, more than the encoding addresses, or 65536 rows of 8 bytes.
    space = parse_space("cols=4|8,spad_kib=512")
    assert [c.cols for c in space.configs()] == [8] and space.invalid == 1
