"""The design space: which configuration parameters vary, over which values.

``braze dse --space 'rows=4..32,cols=4..32,spad_kib=16..256,bus_bits=64..256'`` names parameters
in the units a designer thinks in and maps them onto :class:`~braze.isa.Config`'s fields:

=============  ===================  ==========================================================
space name     Config field         values
=============  ===================  ==========================================================
rows, cols     rows, cols           powers of two from 2 to 64 (the encoding's array limit)
spad_kib       spad_bytes           powers of two, KiB
acc_kib        acc_bytes            powers of two, KiB
bus_bits       dma_bus_bits         64, 128 or 256
spad_banks,    the same             powers of two
acc_banks,
queue_depth,
token_depth
=============  ===================  ==========================================================

A value is ``LO..HI`` (every power of two from LO to HI: every parameter above is a power of two
in a valid configuration), ``A|B|C`` (those values) or one value.  The other fields come from a
base preset (``default``).  A value that no configuration can have (``rows=3``, ``bus_bits=32``)
is a :class:`SpaceError` naming it; a combination that breaks a rule between fields (``rows`` over
``cols``, a scratchpad of more rows than the encoding addresses) is left out of the space and
counted (:attr:`Space.invalid`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

from braze.isa import BrazeError, Config
from braze.isa.config import DMA_BUS_BITS, MAX_ARRAY_DIM, MAX_QUEUE_DEPTH

__all__ = ["SpaceError", "Parameter", "Space", "PARAMETERS", "parse_space", "config_name"]


class SpaceError(BrazeError):
    """A design space that cannot be explored (unknown parameter, impossible value, empty space)."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    field: str
    scale: int          # space value * scale = the Config field's value
    low: int
    high: int
    choices: tuple[int, ...] = ()
    short: str = ""     # in generated configuration names


#: The parameters a space may vary: name -> how it maps onto a Config field.
PARAMETERS: dict[str, _Spec] = {
    "rows": _Spec("rows", 1, 2, MAX_ARRAY_DIM, short="r"),
    "cols": _Spec("cols", 1, 2, MAX_ARRAY_DIM, short="c"),
    "spad_kib": _Spec("spad_bytes", 1024, 1, 1 << 16, short="s"),
    "acc_kib": _Spec("acc_bytes", 1024, 1, 1 << 16, short="a"),
    "bus_bits": _Spec("dma_bus_bits", 1, min(DMA_BUS_BITS), max(DMA_BUS_BITS), DMA_BUS_BITS, short="b"),
    "spad_banks": _Spec("spad_banks", 1, 1, 1 << 16, short="sb"),
    "acc_banks": _Spec("acc_banks", 1, 1, 1 << 16, short="ab"),
    "queue_depth": _Spec("queue_depth", 1, 1, MAX_QUEUE_DEPTH, short="q"),
    "token_depth": _Spec("token_depth", 1, 1, MAX_QUEUE_DEPTH, short="t"),
}


def _pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One varied parameter: its space name, the Config field, and its values (in space units)."""

    name: str
    values: tuple[int, ...]

    @property
    def field(self) -> str:
        return PARAMETERS[self.name].field

    def field_value(self, value: int) -> int:
        return value * PARAMETERS[self.name].scale


def config_name(point: dict[str, int]) -> str:
    """A configuration's name from its point: ``dse_r8_c16_s64_b128`` (the Verilog top's name too)."""
    return "dse_" + "_".join(f"{PARAMETERS[name].short}{value}" for name, value in point.items())


@dataclasses.dataclass(frozen=True)
class Space:
    """A design space over a base configuration.

    Attributes
    ----------
    parameters : tuple of Parameter
        The varied parameters, in the order given.
    base : Config
        Where the fields no parameter varies come from.
    """

    parameters: tuple[Parameter, ...]
    base: Config

    @property
    def names(self) -> list[str]:
        return [parameter.name for parameter in self.parameters]

    def config(self, point: dict[str, int]) -> Config:
        """The configuration of one point (``{space name: value}``); raises ConfigError if invalid."""
        changes = {parameter.field: parameter.field_value(point[parameter.name])
                   for parameter in self.parameters}
        return self.base.replace(name=config_name({name: point[name] for name in self.names}), **changes)

    def point(self, config: Config) -> dict[str, int]:
        """The point of a configuration of this space."""
        return {parameter.name: getattr(config, parameter.field) // PARAMETERS[parameter.name].scale
                for parameter in self.parameters}

    def _combinations(self) -> Iterator[dict[str, int]]:
        for values in itertools.product(*(parameter.values for parameter in self.parameters)):
            yield dict(zip(self.names, values, strict=True))

    def configs(self) -> list[Config]:
        """Every valid configuration of the space (the grid), in a fixed order."""
        valid = []
        for point in self._combinations():
            try:
                valid.append(self.config(point))
            except BrazeError:
                continue
        return valid

    @property
    def combinations(self) -> int:
        """How many points the grid has, valid or not."""
        count = 1
        for parameter in self.parameters:
            count *= len(parameter.values)
        return count

    @property
    def invalid(self) -> int:
        """How many points break a rule between fields (``rows`` over ``cols`` ...)."""
        return self.combinations - len(self.configs())

    def describe(self) -> str:
        values = ", ".join(f"{p.name} {'|'.join(str(v) for v in p.values)}" for p in self.parameters)
        return (f"{values} over {self.base.name}: {self.combinations - self.invalid} valid configurations "
                f"({self.invalid} of {self.combinations} combinations break a rule between fields)")


def _integer(text: str, item: str) -> int:
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise SpaceError(f"space: {item!r}: {text.strip()!r} is not an integer") from None


def _values(name: str, text: str, item: str) -> tuple[int, ...]:
    spec = PARAMETERS[name]
    rule = (f"one of {', '.join(map(str, spec.choices))}" if spec.choices else
            f"a power of two from {spec.low} to {spec.high}")
    if ".." in text:
        low_text, _, high_text = text.partition("..")
        low, high = _integer(low_text, item), _integer(high_text, item)
        if low > high:
            raise SpaceError(f"space: {item!r}: the range is empty ({low} > {high})")
        for end in (low, high):
            if not spec.low <= end <= spec.high or not _pow2(end):
                raise SpaceError(f"space: {item!r}: {end} is not a possible {name} (must be {rule})")
        values = tuple(v for v in (1 << bit for bit in range(high.bit_length())) if low <= v <= high)
    else:
        values = tuple(_integer(part, item) for part in text.split("|"))
        for value in values:
            if not spec.low <= value <= spec.high or not _pow2(value) \
                    or (spec.choices and value not in spec.choices):
                raise SpaceError(f"space: {item!r}: {value} is not a possible {name} (must be {rule})")
    if spec.choices:
        values = tuple(v for v in values if v in spec.choices)
    return tuple(sorted(set(values)))


def parse_space(text: str, base: Config | str = "default") -> Space:
    """The space of ``name=values,...`` (see the module documentation) over the ``base`` configuration.

    Raises
    ------
    SpaceError
        An unknown or repeated parameter, a malformed or impossible value, or a space with no valid
        configuration -- each naming the item.
    """
    base = base if isinstance(base, Config) else Config.parse(base)
    parameters: list[Parameter] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, eq, values = item.partition("=")
        name = name.strip()
        if not eq or not values.strip():
            raise SpaceError(f"space: {item!r} is not of the form name=LO..HI, name=A|B or name=VALUE")
        if name not in PARAMETERS:
            raise SpaceError(f"space: unknown parameter {name!r}; parameters are {', '.join(PARAMETERS)}")
        if name in {parameter.name for parameter in parameters}:
            raise SpaceError(f"space: parameter {name!r} is given twice")
        parameters.append(Parameter(name, _values(name, values.strip(), item)))
    if not parameters:
        raise SpaceError("space: no parameters given (e.g. 'rows=4..16,cols=4..16,bus_bits=64..256')")
    space = Space(tuple(parameters), base)
    if not space.configs():
        raise SpaceError(f"space: {text!r} has no valid configuration over {base.name!r} (every combination "
                         f"breaks a rule, e.g. rows over cols, or a memory of too many rows)")
    return space
