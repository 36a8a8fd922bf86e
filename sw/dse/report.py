"""An exploration as a table and a plot."""

from __future__ import annotations

from pathlib import Path

from .explore import Exploration
from .pareto import OBJECTIVES

__all__ = ["table", "plot"]

_LABELS = {"cycles": "cycles per run (predicted)", "energy": "energy per run, uJ (estimated, 45 nm table)",
           "luts": "LUT4 on the ECP5 (estimated)", "ffs": "flip-flops on the ECP5 (estimated)",
           "dsps": "DSPs on the ECP5 (estimated)", "brams": "block RAMs on the ECP5 (estimated)",
           "fmax": "Fmax, MHz (estimated)"}


def table(exploration: Exploration, *, only_front: bool = False) -> str:
    """Every evaluated configuration (or the Pareto front's), Pareto rows marked ``*``, finalists ``F``."""
    names = exploration.space.names
    headers = ["", *names, "cycles", "predictor", "energy uJ", "LUT4", "FF", "DSP", "BRAM", "Fmax*", "fits",
               "measured", "err %"]
    front = set(exploration.front)
    finalists = set(exploration.finalists)
    rows = []
    order = sorted(range(len(exploration.results)), key=lambda i: exploration.results[i].metrics["cycles"])
    for i in order:
        if only_front and i not in front:
            continue
        result = exploration.results[i]
        m = result.metrics
        point = exploration.space.point(result.config)
        mark = ("F" if i in finalists else "") + ("*" if i in front else "")
        rows.append([mark, *(str(point[name]) for name in names), f"{m['cycles']:.0f}", m["predictor"],
                     f"{m['energy_uj']:.2f}", str(m["luts"]), str(m["ffs"]), str(m["dsps"]), str(m["brams"]),
                     f"{m['fmax_mhz']:.1f}", "yes" if m["fits"] else "no",
                     str(result.measured_cycles) if result.measured_cycles is not None else "-",
                     f"{result.error_pct:+.2f}" if result.error_pct is not None else "-"])
    cells = [headers, *rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"* Pareto front over {', '.join(exploration.objectives)}; F finalist; LUT4/FF/DSP/BRAM "
                 f"estimated for the ECP5-85F; Fmax*: {exploration.area_basis}")
    return "\n".join(lines)


def plot(exploration: Exploration, path: Path) -> Path:
    """The first two objectives of every configuration, the front joined, finalists labelled (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = exploration.objectives
    if len(objectives) == 1:
        objectives = [*objectives, "cycles" if objectives[0] != "cycles" else "luts"]
    x_key, y_key = (OBJECTIVES[name][0] for name in objectives[:2])
    metrics = [result.metrics for result in exploration.results]
    figure, axes = plt.subplots(figsize=(7, 5))
    axes.scatter([m[x_key] for m in metrics], [m[y_key] for m in metrics], s=18, c="0.6",
                 label=f"evaluated ({len(metrics)})")
    front = sorted(exploration.front, key=lambda i: metrics[i][x_key])
    axes.scatter([metrics[i][x_key] for i in front], [metrics[i][y_key] for i in front], s=30, c="tab:red",
                 label=f"Pareto front over {', '.join(exploration.objectives)} ({len(front)})")
    middle = (min(m[x_key] for m in metrics) + max(m[x_key] for m in metrics)) / 2
    for i in exploration.finalists:
        result = exploration.results[i]
        label = result.config.name.removeprefix("dse_")
        if result.error_pct is not None:
            label += f" (RTL {result.error_pct:+.1f}%)"
        right_half = metrics[i][x_key] > middle          # labels point inwards, so none leaves the axes
        axes.annotate(label, (metrics[i][x_key], metrics[i][y_key]), fontsize=7,
                      xytext=(-4 if right_half else 4, 4), textcoords="offset points",
                      ha="right" if right_half else "left")
    axes.set_xlabel(_LABELS[objectives[0]])
    axes.set_ylabel(_LABELS[objectives[1]])
    axes.set_title(f"{exploration.workload.key}: {exploration.search} search")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
