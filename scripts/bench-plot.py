#!/usr/bin/env python3
"""Draws a comparison's summary.csv as one PNG of six bar charts (README "Benchmarks").

    python3 scripts/bench-plot.py bench-results/DATE/summary.csv docs/bench.png

Needs matplotlib (pip install matplotlib, or apt-get install python3-matplotlib).
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("rr_msgs_per_s", "rr msgs/s (higher is better)", 1),
    ("rr_cpu_us_per_msg", "proxy CPU µs per message (lower is better)", 1),
    ("rate_p99_us", "p99 µs at a fixed rate (lower is better)", 1),
    ("bulk_mb_per_s", "bulk MB/s (higher is better)", 1),
    ("bulk_cpu_us_per_mb", "bulk proxy CPU µs per MB (lower is better)", 1),
    ("handshakes_per_s", "handshakes/s (higher is better)", 1),
    ("rss_bytes_per_idle_conn", "RSS KiB per idle connection (lower is better)", 1 / 1024),
]
COLORS = {"direct": "#999999", "nginx": "#009639", "haproxy": "#1f6fb2", "wsplice": "#d9480f"}


def main(summary, out):
    with open(summary, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, axes = plt.subplots(2, 4, figsize=(17, 6.5))
    for ax, (column, title, scale) in zip(axes.flat, PANELS):
        names = [r["target"] for r in rows if r[column]]
        values = [float(r[column]) * scale for r in rows if r[column]]
        bars = ax.bar(names, values, color=[COLORS.get(n, "#555555") for n in names])
        ax.bar_label(bars, labels=[f"{v:,.3g}" if v < 100 else f"{v:,.0f}" for v in values], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    fig.suptitle("wsplice-bench compare: 1 proxy worker on its own CPU, 64-byte messages", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
