"""Experiment: two MATMULs in flight (``Config.matmul_overlap``), measured on the verilator device.

    python benchmarks/matmul_overlap.py        # four Verilator builds (cached)

Runs ``braze bench kernels``' GEMM shapes on default and large with ``weight_preload=1,epilogue_overlap=1``
and ``store_ahead=0`` (the base, as measured before the presets turned all four on: ``matmul_overlap=0``) and
with ``matmul_overlap=1`` on top, each small shape (M <= 16) also streamed and packed
(:func:`braze.kernels_bench.run_gemms`), and prints the bench's tables for both and the comparison
(cycles, utilisation, the timing model's error).  Every output is checked against the exact result.
Ends with one line ``matmul_overlap: <config>_<shape>=<util before>/<util after> ...
small_streamed_worst=<x>/<x> small_packed_worst=<x>/<x> correct=<bool>``.
"""

from __future__ import annotations

import argparse

from braze.kernels_bench import (
    GEMM_SHAPES,
    STREAM_CALLS,
    gemm_table,
    override_specs,
    override_table,
    run_gemms,
    stream_table,
)

BASE = "weight_preload=1,epilogue_overlap=1,store_ahead=0"
OVERLAP = "matmul_overlap=1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="verilator")
    parser.add_argument("--stream-calls", type=int, default=STREAM_CALLS)
    args = parser.parse_args()
    runs = {}
    for label, fields in (("base", f"{BASE},matmul_overlap=0"), ("overlap", f"{BASE},{OVERLAP}")):
        rows = runs[label] = run_gemms(args.device, override_specs(fields), GEMM_SHAPES,
                                       stream_calls=args.stream_calls)
        print(f"GEMMs with {fields} on the {args.device} device")
        print(gemm_table(rows))
        if args.stream_calls > 1:
            print(stream_table(rows))
        print()
    print(f"without / with {OVERLAP} (both with {BASE})")
    print(override_table(runs["base"], runs["overlap"]))

    fields = []
    for before, after in zip(runs["base"], runs["overlap"], strict=True):
        shape = "x".join(map(str, before["shape"]))
        preset = before["config"].split("_")[0]
        fields.append(f"{preset}_{shape}={100 * before['utilisation']:.1f}/{100 * after['utilisation']:.1f}")

    def worst(rows, key):
        values = [row[key] for row in rows if key in row]
        return f"{max(values):.2f}" if values else "n/a"

    for key, name in (("stream_over_bound", "small_streamed_worst"),
                      ("packed_streamed_over_bound", "small_packed_worst")):
        fields.append(f"{name}={worst(runs['base'], key)}/{worst(runs['overlap'], key)}")
    correct = all(row["correct"] for rows in runs.values() for row in rows)
    print(f"matmul_overlap: {' '.join(fields)} correct={correct}")


if __name__ == "__main__":
    main()
