"""The devices of a multi-device session, and the assignment of partitions to them.

A :class:`~braze.sw.runtime.dataflow.DataflowSession` given ``devices=[...]`` owns several
accelerators, possibly of different configurations and back ends::

    DataflowSession(model, calibration=feeds, devices=["default", "large"])
    DataflowSession(model, calibration=feeds, devices=["verilator:tiny", "golden:default"])

Each entry is a :class:`DeviceSpec`: a name (unique in the session), a back end (``golden``,
``verilator``, ...), a :class:`~braze.isa.Config`, and a :class:`~.partitions.HostLink` -- its
own link to the host, so that a device behind a slower link is priced as such.  A spec string is
``CONFIG`` (the session's back end) or ``KIND:CONFIG``, ``CONFIG`` being anything
:meth:`Config.parse` takes.  Every device has its own cost model
(:func:`~braze.sw.runtime.session.choose_cost_model` for its kind and configuration: the learned
performance model where one is trained, else the ISA timing model).

Assignment
----------
Every accelerator region is compiled for every device (through the kernel cache) and priced there
by that device's cost model: kernel cycles plus its link's transfers and device runs.  Partitions
on different devices exchange tensors through the host -- the producer's device moves the tensor to
the host over its link, the consumer's device takes it over its own -- so those transfers are in
each partition's price at its device's link.  :func:`assign` gives each region the device where it
is cheapest; regions that may run at the same time (a mixture's experts: independent of each other)
are assigned together so that the stage's *makespan* -- the busiest device's sum of expected costs
-- is least, which may spread them over devices whose kernels are individually slower.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Mapping, Sequence

from braze.isa import Config
from braze.isa.errors import BrazeError

from .partitions import HostLink

__all__ = ["DeviceSpec", "LazyDevice", "parse_devices", "assign", "stage_cost", "split_placement", "placed"]

#: Exhaustive search of a concurrent stage's assignments up to this many; greedy beyond.
EXHAUSTIVE_LIMIT = 4096


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """One accelerator of a session: its name, back end, configuration and link to the host."""

    name: str
    kind: str
    config: Config
    link: HostLink = HostLink()

    def describe(self) -> str:
        return f"{self.name} ({self.kind}, {self.config.rows}x{self.config.cols} {self.config.name})"


class LazyDevice:
    """A device opened when a plan that runs its partition is deployed, or when it is first used (a run, a
    memory access), not when the partition is compiled.

    A session with several devices compiles every accelerator region for every device to price it there,
    and each compiled partition owns a device (its kernels and weights stay resident); most of them never
    run.  Opening is cheap for the reference model, but a Verilator device is a simulator process, an
    Amaranth one a simulation.  Until it is opened this answers what compiling and pricing read -- its
    ``kind``, ``config`` and memory ``stall`` (the learned cost model's backpressure) -- and any other
    attribute opens the device and is the device's, so that a partition cannot tell the difference.
    """

    _OWN = frozenset({"kind", "config", "stall", "_options", "_device", "_lock"})

    def __init__(self, kind: str, config: Config, **options):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "stall", float(options.get("stall", 0.0)))
        object.__setattr__(self, "_options", options)
        object.__setattr__(self, "_device", None)
        object.__setattr__(self, "_lock", threading.Lock())

    @property
    def opened(self) -> bool:
        return self._device is not None

    def open(self):
        """The device, opened now if it was not (once: partitions on different threads may race here)."""
        with self._lock:
            if self._device is None:
                from braze.sim.device import open_device

                object.__setattr__(self, "_device", open_device(self.kind, self.config, **self._options))
            return self._device

    def __getattr__(self, name: str):
        if name.startswith("__"):              # copy/pickle probes: not a use of the device
            raise AttributeError(name)
        return getattr(self.open(), name)

    def __setattr__(self, name: str, value) -> None:
        if name in self._OWN:
            raise AttributeError(f"LazyDevice.{name} is fixed when it is made")
        setattr(self.open(), name, value)

    def close(self) -> None:
        """Close the device if it was opened (one never opened has nothing to close)."""
        if self._device is not None:
            self._device.close()


def _parse_one(spec: str | Config | DeviceSpec, kind: str, link: HostLink) -> DeviceSpec:
    from braze.sim.device import DEVICES

    if isinstance(spec, DeviceSpec):
        return spec
    if isinstance(spec, Config):
        return DeviceSpec(spec.name, kind, spec, link)
    if not isinstance(spec, str):
        raise BrazeError(f"device {spec!r}: give a DeviceSpec, a Config, or a string 'CONFIG' or "
                         f"'KIND:CONFIG'")
    head, sep, rest = spec.partition(":")
    if sep and head in DEVICES:
        kind, text = head, rest
    else:
        text = spec
    try:
        config = Config.parse(text)
    except BrazeError as error:
        raise BrazeError(f"device {spec!r}: {error}") from error
    return DeviceSpec(config.name, kind, config, link)


def parse_devices(specs: Sequence[str | Config | DeviceSpec], *, kind: str = "golden",
                  link: HostLink | None = None) -> tuple[DeviceSpec, ...]:
    """The session's devices, named uniquely (a repeated name gets its back end, then an index)."""
    if isinstance(specs, (str, Config, DeviceSpec)) or not specs:
        raise BrazeError(f"devices={specs!r}: give a non-empty list of devices (e.g. ['tiny', 'default'])")
    parsed = [_parse_one(spec, kind, link or HostLink()) for spec in specs]
    counts = {}
    for spec in parsed:
        counts[spec.name] = counts.get(spec.name, 0) + 1
    named, seen = [], set()
    for index, spec in enumerate(parsed):
        name = spec.name
        if counts[name] > 1 and not isinstance(specs[index], DeviceSpec):
            name = f"{spec.kind}:{spec.name}"
        if name in seen:
            name = f"{name}#{index}"
        if name in seen:
            raise BrazeError(f"devices: two are named {name!r}")
        seen.add(name)
        named.append(dataclasses.replace(spec, name=name))
    return tuple(named)


def split_placement(where: str) -> tuple[str, str | None]:
    """``"accelerator@large"`` -> ``("accelerator", "large")``; without a device -> ``(where, None)``."""
    base, sep, device = where.partition("@")
    return base, (device if sep else None)


def placed(where: str, device: str) -> str:
    """The placement ``where`` on ``device`` (the partition manager's key for it)."""
    return f"{where}@{device}"


def stage_cost(costs: Mapping[str, Mapping[str, float]], assignment: Mapping[str, str], *,
               concurrent: bool) -> float:
    """The cost of running these regions, each on its assigned device: their sum, or when they run
    concurrently the busiest device's sum (devices run in parallel, one partition at a time each)."""
    if not concurrent:
        return sum(costs[region][assignment[region]] for region in costs)
    load: dict[str, float] = {}
    for region, device in assignment.items():
        load[device] = load.get(device, 0.0) + costs[region][device]
    return max(load.values(), default=0.0)


def assign(costs: Mapping[str, Mapping[str, float]], *, concurrent: bool = False) -> dict[str, str]:
    """The device of every region: ``costs[region][device]`` is its expected cost there.  Sequential
    regions: each where it is cheapest.  Concurrent ones: the least makespan (exhaustive up to
    :data:`EXHAUSTIVE_LIMIT` assignments, else longest-first greedy); ties go to the cheaper sum, then
    the earlier device."""
    best = {region: min(options, key=options.get) for region, options in costs.items()}
    if not concurrent or len(costs) < 2:
        return best
    regions = list(costs)
    devices = list(dict.fromkeys(d for options in costs.values() for d in options))
    if len(devices) ** len(regions) <= EXHAUSTIVE_LIMIT:
        def key(combo):
            chosen = dict(zip(regions, combo, strict=True))
            return (stage_cost(costs, chosen, concurrent=True), stage_cost(costs, chosen, concurrent=False))
        combos = itertools.product(*(list(costs[r]) for r in regions))
        return dict(zip(regions, min(combos, key=key), strict=True))
    load = dict.fromkeys(devices, 0.0)
    chosen = {}
    for region in sorted(regions, key=lambda r: -min(costs[r].values())):
        device = min(costs[region], key=lambda d: (load[d] + costs[region][d], costs[region][d]))
        chosen[region] = device
        load[device] += costs[region][device]
    return {region: chosen[region] for region in regions}


class DevicePlacer:
    """Assigns a plan's accelerator roles to the session's devices by price (see the module documentation).

    ``concurrent_roles`` are the roles that may run at the same time (the mixture's experts);
    ``weights()`` their expected runs per model run (the analyzer's rates; 1 when not known).
    ``concurrent``: run such roles on different devices at the same time (a thread per device), and
    price them so.  ``host`` are the placements that run on the host, not on a device.  A re-placement
    (:meth:`place` with ``keep``) moves a concurrent stage only when that gains more than ``threshold``
    of its cost, so that rates wobbling between equally good assignments do not thrash the plan.
    """

    def __init__(self, devices: Sequence[DeviceSpec], *, concurrent_roles: frozenset[str] = frozenset(),
                 weights=None, concurrent: bool = True, host: frozenset[str] = frozenset({"cpu"}),
                 threshold: float = 0.05):
        self.devices = tuple(devices)
        self.links = {d.name: d.link for d in self.devices}
        self.concurrent_roles = frozenset(concurrent_roles)
        self.weights = weights or (lambda: {})
        self.concurrent = concurrent
        self.host = host
        self.threshold = threshold
        #: The concurrent stage's predicted cost on the devices in force and on the best assignment, as
        #: of the last :meth:`place` with ``keep`` (what a re-assignment gains).
        self.last_move: tuple[float, float] | None = None

    def needs_device(self, where: str) -> bool:
        return where not in self.host and split_placement(where)[1] is None

    def costs(self, region: str, where: str, partition) -> dict[str, float]:
        """The region's predicted cost per run on each device (compiled there through the kernel cache)."""
        return {d.name: float(partition(region, placed(where, d.name)).predicted_cycles)
                for d in self.devices}

    def preferred(self, region: str, where: str, partition) -> str:
        """``where`` on the device where the region is cheapest."""
        costs = self.costs(region, where, partition)
        return placed(where, min(costs, key=costs.get))

    def place(self, layout: Mapping[str, tuple[str, str]], partition, keep: Mapping[str, str] | None = None
              ) -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, dict[str, float]]]:
        """The layout with every accelerator role on a device, the role -> device map, and the prices it
        was chosen by (role -> device -> predicted cycles per run of the partition there).  ``keep``: the
        devices in force, kept for the concurrent stage unless moving it gains more than ``threshold``."""
        roles = {role: (region, where) for role, (region, where) in layout.items()
                 if self.needs_device(where)}
        costs = {role: self.costs(region, where, partition) for role, (region, where) in roles.items()}
        weights = self.weights()
        together = [role for role in roles if role in self.concurrent_roles]
        chosen = assign({r: c for r, c in costs.items() if r not in together})
        if together:
            weighted = {r: {d: weights.get(r, 1.0) * c for d, c in costs[r].items()} for r in together}
            best = assign(weighted, concurrent=self.concurrent)
            if keep is not None and all(keep.get(r) in weighted[r] for r in together):
                held = {r: keep[r] for r in together}
                now = stage_cost(weighted, held, concurrent=self.concurrent)
                self.last_move = (now, stage_cost(weighted, best, concurrent=self.concurrent))
                if self.last_move[1] >= now * (1 - self.threshold):
                    best = held
            chosen.update(best)
        placed_layout = dict(layout)
        for role, (region, where) in roles.items():
            placed_layout[role] = (region, placed(where, chosen[role]))
        return placed_layout, {role: chosen[role] for role in roles}, costs

    def stage_cost(self, costs: Mapping[str, Mapping[str, float]]) -> float:
        """The least expected cost of these concurrent roles' stage (``costs[role][device]``, weighted)."""
        return stage_cost(costs, assign(costs, concurrent=self.concurrent), concurrent=self.concurrent)

    def describe(self) -> str:
        together = " (independent partitions on different devices run at once)" if self.concurrent else ""
        return "devices: " + "; ".join(d.describe() for d in self.devices) + together

    def report(self, plan) -> list[str]:
        """Which device each accelerator partition is on and why (its price on every device), and the
        tensors moving between devices."""
        lines = [self.describe(), "assignment (predicted cycles per run of each partition on each device; "
                 "* = chosen):"]
        names = [d.name for d in self.devices]
        lines.append(f"  {'role':<14} {'region':<14} " + " ".join(f"{n} ".rjust(15) for n in names))
        for role, device in plan.devices.items():
            costs = plan.device_costs.get(role, {})
            cells = " ".join(f"{f'{costs[n]:.0f}' if n in costs else '-'}{'*' if n == device else ' ':<1}"
                             .rjust(15) for n in names)
            lines.append(f"  {role:<14} {plan.partitions[role].region.name:<14} {cells}")
        if plan.device_transfers:
            lines.append("transfers between devices (through the host):")
            for t in plan.device_transfers:
                lines.append(f"  {t.tensor:<40} {t.source}@{t.source_device} -> {t.target}@{t.target_device} "
                             f"{t.bytes:>6} B  {t.cycles:.0f} cycles")
        else:
            lines.append("transfers between devices: none (no tensor goes from one device's partition to "
                         "another's)")
        return lines
