"""Experiment: RTL cycles of plans made by the analytic and by the learned cost model (issue 9's plan target).

    python benchmarks/hpm_plans.py                                   # the shipped model, every case below
    python benchmarks/hpm_plans.py --model DIR cnn:64:default:0.3    # another model, chosen cases

A case is ``net:batch:preset:backpressure`` (net ``cnn`` or ``mlp``: the digits models of
:mod:`braze.sw.compiler.models`).  Each case compiles the model twice on the Verilator device -- once
planned by the timing model, once by :class:`~braze.sw.hpm.LearnedCostModel` told the backpressure --
runs one batch and prints both plans' total kernel cycles.  Under backpressure the simulated memory's
stalls are random, so the same plan measures differently from run to run: such cases run each plan
``--repeats`` times, repeat ``i`` of both plans under the same recorded stall pattern
(``VerilatorDevice.set_stall_seed``), and compare the means beside the spread of the repeats.  The
learned plan's convolution layouts (chosen by the cost model, ``braze.sw.compiler.layouts``) are
printed beside its cycles.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CASES = ("cnn:64:default:0", "cnn:64:default:0.3", "cnn:64:large:0", "cnn:64:large:0.3",
         "cnn:16:default:0", "cnn:16:default:0.3", "cnn:256:default:0", "cnn:256:default:0.3",
         "cnn:16:large:0.3", "mlp:256:default:0.3", "mlp:64:large:0.3")


def main() -> None:
    from braze.isa import Config
    from braze.sim.device import open_device
    from braze.sw.compiler import models
    from braze.sw.compiler.cost import TimingCostModel
    from braze.sw.hpm import LearnedCostModel, MemorySystem, PerformanceModel, load_model
    from braze.sw.runtime.session import InferenceSession

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", default=CASES, help="net:batch:preset:backpressure")
    parser.add_argument("--model", type=Path, help="a saved model folder (default: the shipped one)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each plan under backpressure (default 3)")
    args = parser.parse_args()
    model = PerformanceModel.load(args.model) if args.model else load_model("verilator")
    data = models.load_digits_split()
    nets = {"cnn": models.train_cnn(data, seed=0)[0], "mlp": models.train_mlp(data, seed=0)[0]}
    ratios = []
    for case in args.cases:
        net, batch, preset, stall_text = case.split(":")
        config, stall = Config.parse(preset), float(stall_text)
        network = nets[net]
        calibration = models.calibration_set(network, data, seed=0)
        x = network.inputs(data.x_val[:int(batch)])
        memory = MemorySystem(config.mem_latency, stall)
        cycles: dict[str, list[int]] = {"analytic": [], "learned": []}
        layouts = {}
        with open_device("verilator", config) as device:
            device.set_stall(stall)
            sessions = {}
            for name in cycles:
                cost_model = (TimingCostModel() if name == "analytic"
                              else LearnedCostModel(model, device="verilator", memory=memory))
                sessions[name] = InferenceSession(network.to_onnx(), device=device, config=config,
                                                  calibration=calibration, cost_model=cost_model,
                                                  record=False)
            for repeat in range(args.repeats if stall else 1):
                for name, session in sessions.items():
                    device.set_stall_seed(1 + 997 * repeat)      # both plans under the same pattern
                    session.run(None, {session.get_inputs()[0].name: x})
                    cycles[name].append(session.report().total_cycles)
            for name, session in sessions.items():
                layouts[name] = ",".join(f"{node.name}={node.attrs['conv_layout']}"
                                         for node in session.graph_after.nodes
                                         if node.attrs.get("conv_layout")) or "library"
        analytic, learned = (sum(values) / len(values) for values in cycles.values())
        spread = max((max(values) - min(values)) / (sum(values) / len(values)) for values in cycles.values())
        wins = sum(b < a for a, b in zip(cycles["analytic"], cycles["learned"], strict=True))
        ratios.append(learned / analytic)
        print(f"{case:22} analytic {cycles['analytic']}  learned {cycles['learned']}  "
              f"learned/analytic {learned / analytic - 1:+.2%}  repeat spread {spread:.2%}  "
              f"learned faster in {wins}/{len(cycles['learned'])}  learned layouts: {layouts['learned']}",
              flush=True)
    mean = sum(ratios) / len(ratios)
    print(f"hpm_plans: cases={len(ratios)} mean_learned_over_analytic={mean:.4f} "
          f"worst={max(ratios):.4f} best={min(ratios):.4f}")


if __name__ == "__main__":
    main()
