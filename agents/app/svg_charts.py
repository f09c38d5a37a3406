"""Charts of a run report as inline SVG, written by hand: no plotting library, nothing to fetch.

Each chart is a block of the report (see html_report.document): a step chart of the best speedup so far,
bars of the roofline fraction, lines of the loss curves. Every label is escaped where it is written.
"""
from __future__ import annotations

import html
import math
from typing import Any

Block = dict[str, Any]


def finite_number(value: Any) -> float | None:
    # summary values are JSON: anything that is not a finite number is "not measured"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def number_text(value: Any, spec: str, suffix: str = "") -> str:
    """A number as the terminal report writes it ("1.23x", "45%", "1,234"), or "—" when not measured."""
    number = finite_number(value)
    return "—" if number is None else f"{number:{spec}}{suffix}"


def ratio_text(value: Any) -> str:
    return number_text(value, ".2f", "x")


def percent_text(value: Any) -> str:
    return number_text(value, ".0%")


WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 720, 260, 56, 16, 40, 36


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    raw = (high - low) / count or 1.0
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _frame(block: Block, height: int, labels: tuple[str, str], x_ticks: list[tuple[float, str]],
           y_ticks: list[tuple[float, str]]) -> list[str]:
    """The chart's opening tag, plot box, title, axis labels and ticks (as (position, text) pairs)."""
    e, title = html.escape, html.escape(block["title"])
    out = [(f'<svg class="chart" data-chart="{e(block["name"])}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
            f'height="{height}" role="img"><title>{title}</title><text class="title" x="{LEFT}" y="18">{title}</text>'),
           f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{height - TOP - BOTTOM}"/>',
           f'<text class="label" x="{WIDTH - RIGHT}" y="{height - 4}" text-anchor="end">{e(labels[0])}</text>',
           f'<text class="label" x="{LEFT}" y="{TOP - 6}" text-anchor="middle">{e(labels[1])}</text>']
    out += [f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{e(t)}</text>' for y, t in y_ticks]
    return out + [f'<text class="tick" x="{x:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle">{e(t)}</text>'
                  for x, t in x_ticks]


def step_chart(block: Block) -> str:
    """Best ×compile so far against candidate number (a step line), each candidate's own ×compile as a dot."""
    rows = block["candidates"]
    values = [r["speedup_compile"] for r in rows if r["speedup_compile"] is not None]
    top = max(values + [1.0]) * 1.1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x = lambda n: LEFT + (n - 0.5) / len(rows) * plot_w  # one slot per candidate
    y = lambda v: TOP + plot_h * (1 - v / top)
    every = max(1, len(rows) // 12)
    out = _frame(block, HEIGHT, ("candidate", "×compile"),
                 [(x(r["number"]), str(r["number"])) for r in rows if r["number"] % every == 0 or r["number"] == 1],
                 [(y(t), f"{t:g}x") for t in _ticks(0, top)])
    out.append(f'<text class="label" x="{LEFT}" y="{HEIGHT - 4}">line: best so far · dot: the candidate · '
               f'cross: failed or rejected · dashes: torch.compile</text>')
    out.append(f'<line class="parity" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(1.0):.1f}" y2="{y(1.0):.1f}"/>')
    path = []
    for r in rows:
        if r["best_compile_so_far"] is not None:
            px, py = x(r["number"]), y(r["best_compile_so_far"])
            path.append(f"M{px:.1f},{py:.1f}" if not path else f"H{px:.1f}V{py:.1f}")
    if len(path) == 1:  # one point: a short level segment, so the line is visible
        path.append(f"h{plot_w / len(rows) / 2:.1f}")
    out.append(f'<path class="series best" d="{"".join(path)}"/>')
    for r in rows:
        title = f"{r['id']} {r['origin']}: {r['status']}"
        if r["speedup_compile"] is not None:
            out.append(f'<circle class="marker {html.escape(r["status"])}" cx="{x(r["number"]):.1f}" '
                       f'cy="{y(r["speedup_compile"]):.1f}" r="4"><title>{html.escape(title)} '
                       f'{ratio_text(r["speedup_compile"])}</title></circle>')
        elif r["status"] != "accepted":  # a failure has no speed: a cross on the axis says it was tried
            px, py = x(r["number"]), TOP + plot_h - 6
            out.append(f'<path class="marker failed" d="M{px - 4:.1f},{py - 4:.1f}l8,8m0,-8l-8,8">'
                       f'<title>{html.escape(title)}</title></path>')
    return "".join(out + ["</svg>"])


def bar_chart(block: Block) -> str:
    """One horizontal bar per timed candidate: its fraction of the measured ceiling (100% is the roofline)."""
    bars = block["bars"]
    height = TOP + BOTTOM + 20 * len(bars)
    plot_w = WIDTH - LEFT - RIGHT
    top = max([b for _, b in bars] + [1.0])
    x = lambda f: LEFT + plot_w * f / top
    out = _frame(block, height, ("fraction of the roofline", ""), [(x(t), f"{t:.0%}") for t in _ticks(0, top)], [])
    for i, (cid, fraction) in enumerate(bars):
        row_y = TOP + 4 + 20 * i
        kind = "bar winner" if cid == block["winner"] else "bar"
        name, width = html.escape(str(cid)), max(x(fraction) - LEFT, 1)  # a zero still shows as a sliver
        out.append(f'<text class="tick" x="{LEFT - 6}" y="{row_y + 12}" text-anchor="end">{name}</text>'
                   f'<rect class="{kind}" x="{LEFT}" y="{row_y}" width="{width:.1f}" height="14">'
                   f'<title>{name} {percent_text(fraction)}</title></rect>'
                   f'<text class="tick" x="{x(fraction) + 4:.1f}" y="{row_y + 12}">{percent_text(fraction)}</text>')
    out.append(f'<line class="parity" x1="{x(1.0):.1f}" x2="{x(1.0):.1f}" y1="{TOP}" y2="{height - BOTTOM}"/>')
    return "".join(out + ["</svg>"])


def line_chart(block: Block) -> str:
    """Loss against step, one line per backend (and PyTorch's repeat run when there is one)."""
    steps, curves = block["x"], block["curves"]
    values = [v for c in curves.values() for v in c if v is not None]
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or 0.5
    low, high = low - pad, high + pad
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = (steps[-1] - steps[0]) or 1
    x = lambda s: LEFT + plot_w * (s - steps[0]) / span
    y = lambda v: TOP + plot_h * (1 - (v - low) / (high - low))
    out = _frame(block, HEIGHT, ("step", "loss"), [(x(t), f"{t:g}") for t in _ticks(steps[0], steps[-1])],
                 [(y(t), f"{t:g}") for t in _ticks(low, high)])
    for i, (name, curve) in enumerate(curves.items()):
        points = [f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, curve) if v is not None]
        key_y = TOP + 8 + 16 * i
        out.append(f'<path class="series s{i}" d="M{"L".join(points)}"><title>{html.escape(name)}</title></path>'
                   f'<rect class="key s{i}" x="{WIDTH - RIGHT - 150}" y="{key_y}" width="12" height="4"/>'
                   f'<text class="tick" x="{WIDTH - RIGHT - 132}" y="{key_y + 5}">{html.escape(name)}</text>')
    return "".join(out + ["</svg>"])
