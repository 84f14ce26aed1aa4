"""Plot speedups from benchmark JSON files: flashlight's time over each baseline's, per variant.

    python benchmarks/plot.py benchmarks/results/NVIDIA_H100_80GB_HBM3-2026-11-22-run5.json -o speedups.png

Needs matplotlib (not a dependency of flashlight: ``pip install matplotlib``). Bars above 1 mean
flashlight is faster; each file is one run, so every ratio compares numbers of the same process.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{baseline: {"variant shape": baseline_ms / flashlight_ms}}."""
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        cells.setdefault((r["variant"], r["shape"]), {})[r["impl"]] = r["ms"]
    out: dict[str, dict[str, float]] = {}
    for (variant, shape), c in cells.items():
        if "flashlight" not in c:
            continue
        for impl, ms in c.items():
            if impl != "flashlight":
                out.setdefault(impl, {})[f"{variant} {shape}"] = ms / c["flashlight"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", "--output", default="speedups.png")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for f in args.files for r in json.loads(Path(f).read_text())]
    data = speedups(rows)
    labels = sorted({k for d in data.values() for k in d}, key=lambda s: (s.split()[1], s.split()[0]))
    impls = sorted(data, key=lambda i: ("flex" not in i, i))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(labels) * max(1, len(impls)) ** 0.5), 5))
    for k, impl in enumerate(impls):
        xs = [i + k * width for i, lab in enumerate(labels) if lab in data[impl]]
        ys = [data[impl][lab] for lab in labels if lab in data[impl]]
        ax.bar(xs, ys, width, label=f"{impl} / flashlight")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("speedup of flashlight (baseline ms / flashlight ms)")
    geo = {i: math.exp(sum(math.log(v) for v in d.values()) / len(d)) for i, d in data.items()}
    ax.set_title("flashlight speedups; geomean " + ", ".join(f"{i} {g:.2f}x" for i, g in geo.items()), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
