"""The (cos(next), margin) front of several designs on one plot, from `lvmq eval --json` files.

Each design's forward curve, unit(pred − g·previous) for g = 0…0.5, traces what it can offer:
closeness to the next sentence against distance from the last one. A design is better at the
margin where its curve lies above another's at the same cos(next); the dashed line is the
context mean's cos(next), where `lvmq eval` reads the margin ("m@base").

    python -m training.front NAME=eval.json [NAME=eval.json ...] --out docs/images/front.svg
        [--splits ood,news] [--baselines context_mean,ridge_pos]

The SVG is written by hand (no plotting library in the engine's dependencies).
"""

from __future__ import annotations

import argparse
import json
from html import escape
from pathlib import Path

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
PANEL_W, PANEL_H, PAD = 360, 280, 48


def curves(files: dict[str, Path], splits: list[str], baselines: list[str]) -> dict[str, dict[str, list]]:
    """split -> design -> [(cos, margin), ...] along g; baselines taken from the first file."""
    out: dict[str, dict[str, list]] = {s: {} for s in splits}
    for n, (name, path) in enumerate(files.items()):
        report = json.loads(Path(path).read_text())["splits"]
        for split in splits:
            predictors = {"model": name, **({b: b for b in baselines} if n == 0 else {})}
            for key, label in predictors.items():
                curve = report[split][key]["forward_curve"]
                out[split][label] = [(p["cos_next"], p["margin"]) for p in curve]
    return out


def base_cos(files: dict[str, Path], split: str) -> float:
    first = json.loads(Path(next(iter(files.values()))).read_text())["splits"]
    return first[split]["context_mean"]["cos_next"]["mean"]


def svg(data: dict[str, dict[str, list]], bases: dict[str, float], title: str) -> str:
    splits = list(data)
    width, height = PAD + len(splits) * (PANEL_W + PAD), PANEL_H + 2 * PAD + 24 * 3
    labels = list(dict.fromkeys(label for d in data.values() for label in d))
    colour = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(labels)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{PAD}" y="18" font-size="13">{escape(title)}</text>',
    ]
    for i, split in enumerate(splits):
        x0, y0 = PAD + i * (PANEL_W + PAD), PAD
        points = [p for c in data[split].values() for p in c] + [(bases[split], 0.0)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        lo_x, hi_x = min(xs) - 0.005, max(xs) + 0.005
        lo_y, hi_y = min(min(ys), 0.0) - 0.01, max(max(ys), 0.0) + 0.01

        def at(cos: float, margin: float, lo_x=lo_x, hi_x=hi_x, lo_y=lo_y, hi_y=hi_y, x0=x0, y0=y0) -> str:
            x = x0 + (cos - lo_x) / (hi_x - lo_x) * PANEL_W
            y = y0 + PANEL_H - (margin - lo_y) / (hi_y - lo_y) * PANEL_H
            return f"{x:.1f},{y:.1f}"

        parts.append(f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>')
        parts.append(f'<text x="{x0 + 4}" y="{y0 - 6}" font-size="12">{escape(split)}</text>')
        zero = at(lo_x, 0.0).split(",")[1]
        parts.append(f'<line x1="{x0}" x2="{x0 + PANEL_W}" y1="{zero}" y2="{zero}" stroke="#bbb"/>')
        bx = at(bases[split], 0.0).split(",")[0]
        parts.append(f'<line x1="{bx}" x2="{bx}" y1="{y0}" y2="{y0 + PANEL_H}" stroke="#888" stroke-dasharray="4,3"/>')
        for tick in (lo_x, (lo_x + hi_x) / 2, hi_x):
            tx = at(tick, lo_y).split(",")[0]
            parts.append(f'<text x="{tx}" y="{y0 + PANEL_H + 14}" text-anchor="middle">{tick:.3f}</text>')
        for tick in (lo_y, 0.0, hi_y):
            ty = at(lo_x, tick).split(",")[1]
            parts.append(f'<text x="{x0 - 4}" y="{ty}" text-anchor="end">{tick:+.2f}</text>')
        parts.append(f'<text x="{x0 + PANEL_W / 2}" y="{y0 + PANEL_H + 28}" text-anchor="middle">cos(next)</text>')
        for label, curve in data[split].items():
            path = " ".join(at(c, m) for c, m in curve)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour[label]}" stroke-width="1.5"/>')
            first = at(*curve[0]).split(",")
            parts.append(f'<circle cx="{first[0]}" cy="{first[1]}" r="3" fill="{colour[label]}"/>')
    for j, label in enumerate(labels):
        lx, ly = PAD + (j % 3) * 240, PANEL_H + 2 * PAD + 8 + (j // 3) * 18
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="14" height="4" fill="{colour[label]}"/>')
        parts.append(f'<text x="{lx + 20}" y="{ly - 4}">{escape(label)}</text>')
    parts.append(
        f'<text x="{PAD}" y="{height - 6}" fill="#555">y: margin cos(next) − cos(previous); dot: g = 0, '
        "the line runs to g = 0.5; dashed: the context mean's cos(next)</text></svg>"
    )
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.front", description=__doc__.split("\n\n")[1])
    p.add_argument("designs", nargs="+", help="NAME=path of an `lvmq eval --json` file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", default="ood,news")
    p.add_argument("--baselines", default="context_mean,ridge_pos")
    p.add_argument("--title", default="forward curves: margin against cos(next), g = 0…0.5")
    args = p.parse_args(argv)
    files = dict(d.split("=", 1) for d in args.designs)
    splits = [s for s in args.splits.split(",") if s]
    data = curves({k: Path(v) for k, v in files.items()}, splits, [b for b in args.baselines.split(",") if b])
    bases = {s: base_cos({k: Path(v) for k, v in files.items()}, s) for s in splits}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(svg(data, bases, args.title))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
