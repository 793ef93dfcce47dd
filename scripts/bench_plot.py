#!/usr/bin/env python3
"""Draws docs/benchmarks.svg from the summary lines the benches print.

Usage: make bench 2>&1 | tee target/bench.txt; python3 scripts/bench_plot.py target/bench.txt docs/benchmarks.svg

Reads the "paired ..." lines of benches/spawn.rs and the "spawn -> first PTY byte" lines of
benches/interactive.rs: one pair of bars (raw runtime CLI, library) per runtime and mode, with
the ratio written above. Standard library only.
"""
import re
import sys

PAIRED = re.compile(r"paired (\w+) (\w+): .*raw CLI run ([\d.]+) ms, library ([\d.]+) ms, ratio ([\d.]+)")
PTY = re.compile(r"spawn -> first PTY byte, (\w+), .*raw console-socket spawn ([\d.]+) ms, library ([\d.]+) ms, ratio ([\d.]+)")


def parse(text):
    rows = []
    for line in text.splitlines():
        if m := PAIRED.search(line):
            rows.append((m[1], m[2], float(m[3]), float(m[4]), float(m[5])))
        elif m := PTY.search(line):
            rows.append((m[1], "spawn_interactive", float(m[2]), float(m[3]), float(m[4])))
    return rows


def svg(rows):
    width, height, top, bottom, left = 900, 420, 40, 90, 60
    plot_h = height - top - bottom
    group_w = (width - left - 20) / max(len(rows), 1)
    vmax = max(max(r[2], r[3]) for r in rows) * 1.15
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">spawn to exit of /bin/true (PTY: to first byte), median ms: raw runtime CLI vs oci-sandbox</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 20}" y2="{top + plot_h}" stroke="black"/>',
    ]
    for tick in range(0, 6):
        v = vmax * tick / 5
        y = top + plot_h - plot_h * tick / 5
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{v:.0f}</text>')
        out.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#ddd"/>')
    for i, (runtime, mode, raw, lib, ratio) in enumerate(rows):
        x = left + i * group_w + group_w * 0.15
        bw = group_w * 0.32
        for j, (v, color) in enumerate([(raw, "#9aa5b1"), (lib, "#2f6fbf")]):
            h = plot_h * v / vmax
            out.append(f'<rect x="{x + j * bw}" y="{top + plot_h - h}" width="{bw - 2}" height="{h}" fill="{color}"/>')
        h = plot_h * max(raw, lib) / vmax
        out.append(f'<text x="{x + bw}" y="{top + plot_h - h - 6}" text-anchor="middle">{ratio:.2f}x</text>')
        out.append(f'<text x="{x + bw}" y="{top + plot_h + 16}" text-anchor="middle">{runtime}</text>')
        out.append(f'<text x="{x + bw}" y="{top + plot_h + 30}" text-anchor="middle">{mode}</text>')
    out.append(f'<rect x="{left}" y="{height - 30}" width="12" height="12" fill="#9aa5b1"/><text x="{left + 16}" y="{height - 20}">raw CLI (same run)</text>')
    out.append(f'<rect x="{left + 160}" y="{height - 30}" width="12" height="12" fill="#2f6fbf"/><text x="{left + 176}" y="{height - 20}">library</text>')
    out.append("</svg>")
    return "\n".join(out)


if __name__ == "__main__":
    rows = parse(open(sys.argv[1]).read())
    if not rows:
        sys.exit("no bench summary lines found")
    open(sys.argv[2], "w").write(svg(rows) + "\n")
