"""Config.redirect_stage: a taken BRANCH costs on the RTL (Amaranth simulator) what the timing model charges
for it -- REDIRECT_STAGE_CYCLES more than without the register -- and one not taken nothing (docs/isa.md,
issue 16)."""

from __future__ import annotations

from test_control_flow_devices import branch_programs

from braze.isa import Config
from braze.isa.timing import REDIRECT_STAGE_CYCLES, fetch_redirect_cycles
from braze.sim.device import open_device

#: With the two dispatch stages the registered redirect is meant to go with.
PLAIN = Config.preset("default").replace(name="default_ds2", dispatch_stage=2)
REDIRECTED = PLAIN.replace(name="default_ds2_rs", redirect_stage=1)
PROGRAMS = branch_programs()


def test_a_registered_redirect_costs_on_the_rtl_what_the_timing_model_charges():
    cycles = {}
    for config in (PLAIN, REDIRECTED):
        with open_device("golden", config) as golden, open_device("amaranth", config) as device:
            for name, program in PROGRAMS.items():
                cycles["golden", config.name, name] = golden.run(program).cycles
                cycles["amaranth", config.name, name] = device.run(program).cycles
    redirect = fetch_redirect_cycles(REDIRECTED) + REDIRECT_STAGE_CYCLES
    on = {name: cycles["golden", REDIRECTED.name, name] for name in PROGRAMS}
    # The model: four more taken BRANCHes, each the SCALAR's cycle, the BRANCH's and the redirect.
    assert on["loop 5"] - on["loop 1"] == 4 * (2 + redirect), cycles
    assert on["taken"] - on["not taken"] == redirect - 1, cycles
    # Against the build without the register, on the model and on the RTL alike: a cycle per taken BRANCH,
    # none for one not taken.  (The Amaranth device's memory refills the fetch unit faster than
    # fetch_redirect_cycles says, so its absolute redirect cost is not the model's; the difference is.)
    taken = {"loop 1": 0, "loop 5": 4, "not taken": 0, "taken": 1}    # a loop run n times takes n-1
    for kind in ("golden", "amaranth"):
        added = {name: cycles[kind, REDIRECTED.name, name] - cycles[kind, PLAIN.name, name]
                 for name in PROGRAMS}
        assert added == {name: REDIRECT_STAGE_CYCLES * count for name, count in taken.items()}, (kind, cycles)
