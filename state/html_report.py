"""`sluice usage --html FILE`: one self-contained page of spend and tokens over time, by model and by client.

Everything is in the file: CSS in a `<style>` element and the charts as inline SVG drawn here (stacked bars,
one per day — or per hour when the calls span two days or less). No script, no font, no image and no
stylesheet is fetched, so the page opens anywhere, offline, and can be mailed around. Each bar segment
carries a `<title>`, which browsers show as a tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from state import report
from state.store import Database

# Series beyond this many are summed into "other" (by total, largest first).
MAX_SERIES = 8
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
OTHER = "other"
CHART_WIDTH = 960
CHART_HEIGHT = 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 80, 20, 16, 56

type _Formatter = Callable[[float], str]
type _Measure = Callable[[report.UsageRow], float]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; }
.meta { color: #666; }
.totals { display: flex; gap: 2em; flex-wrap: wrap; margin: 1em 0; }
.totals div { background: #f4f5f7; border-radius: 6px; padding: 0.6em 1em; }
.totals b { display: block; font-size: 1.3em; }
table { border-collapse: collapse; margin-top: 0.5em; }
th, td { padding: 0.25em 0.8em; text-align: right; border-bottom: 1px solid #e3e3e3; }
th:first-child, td:first-child { text-align: left; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.legend span { display: inline-block; margin-right: 1.2em; }
.legend i { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: -1px; }
.empty { color: #666; font-style: italic; }
"""


@dataclass(frozen=True)
class Series:
    name: str
    values: tuple[float, ...]  # one per bucket

    @property
    def total(self) -> float:
        return sum(self.values)


def render(
    db: Database,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    now: datetime,
) -> str:
    """The whole page, as text."""
    everything = report.usage(db, group_by=("day",), since=since, until=until)
    hourly = _spans_two_days_or_less(everything.rows)
    unit = "hour" if hourly else "day"
    sections: list[str] = []
    by_model = report.usage(db, group_by=(unit, "model"), since=since, until=until)
    by_client = report.usage(db, group_by=(unit, "client"), since=since, until=until)
    buckets = _buckets([row.group[unit] for row in by_model.rows], hourly)
    # One colour per model (client) in every chart: by rank of spend, then name.
    colours = {
        dimension: {
            series.name: PALETTE[index % len(PALETTE)]
            for index, series in enumerate(_series(usage.rows, unit, dimension, buckets, _cost, keep=10_000))
        }
        for usage, dimension in ((by_model, "model"), (by_client, "client"))
    }
    for title, measure, fmt in (
        ("Spend", _cost, _usd),
        ("Tokens (input, cache read and write, output)", _tokens, _count),
    ):
        for usage, dimension in ((by_model, "model"), (by_client, "client")):
            series = _series(usage.rows, unit, dimension, buckets, measure)
            sections.append(f"<h2>{escape(title)} by {dimension}, per {unit} (UTC)</h2>")
            sections.append(bar_chart(buckets, series, fmt, hourly, colours[dimension]))
    total = everything.total
    window = _window_text(since, until)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sluice usage</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>sluice usage</h1>
<p class="meta">{escape(window)} · generated {escape(now.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))}</p>
<div class="totals">
<div>calls<b>{total.calls:,}</b></div>
<div>cost<b>{escape(report.cost_text(_usd(float(total.cost_usd)), total))}</b></div>
<div>input<b>{total.input_tokens:,}</b></div>
<div>cache read<b>{total.cache_read_tokens:,}</b></div>
<div>cache write<b>{total.cache_write_tokens:,}</b></div>
<div>output<b>{total.output_tokens:,}</b></div>
<div>unpriced<b>{total.unpriced_calls:,}</b></div>
<div>errors<b>{total.errors:,}</b></div>
</div>
{"".join(sections)}
<h2>By model</h2>
{_table(report.usage(db, group_by=("model",), since=since, until=until), "model")}
<h2>By client</h2>
{_table(report.usage(db, group_by=("client",), since=since, until=until), "client")}
</body>
</html>
"""


def bar_chart(
    buckets: Sequence[str],
    series: Sequence[Series],
    fmt: _Formatter,
    hourly: bool = False,
    colours: Mapping[str, str] | None = None,
) -> str:
    """Stacked bars, one per bucket, one colour per series, with a y axis, x labels and a legend."""
    if not buckets or not series or all(s.total == 0 for s in series):
        return '<p class="empty">Nothing recorded in this period.</p>'
    stacks = [sum(s.values[i] for s in series) for i in range(len(buckets))]
    top = nice_ceiling(max(stacks))
    plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    slot = plot_w / len(buckets)
    bar = max(1.0, slot * 0.8)
    parts = [
        f'<svg role="img" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" '
        f'viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}">'
    ]
    for tick in range(5):
        value = top * tick / 4
        y = MARGIN_TOP + plot_h - plot_h * tick / 4
        parts.append(
            f'<line x1="{MARGIN_LEFT}" x2="{CHART_WIDTH - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#e3e3e3"/>'
            f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>'
        )
    every = max(1, math.ceil(len(buckets) / 16))  # at most ~16 labels
    for index, bucket in enumerate(buckets):
        x = MARGIN_LEFT + slot * index + (slot - bar) / 2
        y = MARGIN_TOP + plot_h
        for position, one in enumerate(series):
            value = one.values[index]
            if value <= 0:
                continue
            height = plot_h * value / top
            y -= height
            colour = _colour(position, one.name, colours)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}" fill="{colour}">'
                f"<title>{escape(bucket)} · {escape(one.name)}: {escape(fmt(value))}</title></rect>"
            )
        if index % every == 0:
            label = bucket[11:16] if hourly else bucket[5:10]
            lx = x + bar / 2
            ly = MARGIN_TOP + plot_h + 14
            parts.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" '
                f'transform="rotate(-40 {lx:.1f} {ly:.1f})">{escape(label)}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{_colour(position, one.name, colours)}"></i>{escape(one.name)} '
        f"({escape(fmt(one.total))})</span>"
        for position, one in enumerate(series)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times 10^n at or above `value` (1 for nothing), for the top of an axis."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power * (1 + 1e-12):
            return float(step * power)
    return float(10 * power)


def _usd(value: float) -> str:
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def _count(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1_000:.0f}k"
    return f"{value:,.0f}"


def _cost(row: report.UsageRow) -> float:
    return float(row.cost_usd)


def _tokens(row: report.UsageRow) -> float:
    return float(row.input_tokens + row.cache_read_tokens + row.cache_write_tokens + row.output_tokens)


def _series(
    rows: Sequence[report.UsageRow],
    unit: str,
    dimension: str,
    buckets: Sequence[str],
    measure: _Measure,
    keep: int = MAX_SERIES,
) -> list[Series]:
    position = {bucket: index for index, bucket in enumerate(buckets)}
    values: dict[str, list[float]] = {}
    for row in rows:
        name = row.group[dimension] or "(none)"
        bucket = row.group[unit]
        if bucket is None or bucket not in position:
            continue
        values.setdefault(name, [0.0] * len(buckets))[position[bucket]] += measure(row)
    ranked = sorted(values.items(), key=lambda item: (-sum(item[1]), item[0]))
    kept = [Series(name, tuple(v)) for name, v in ranked[:keep]]
    rest = ranked[keep:]
    if rest:
        summed = tuple(sum(v[i] for _, v in rest) for i in range(len(buckets)))
        kept.append(Series(f"{OTHER} ({len(rest)})", summed))
    return kept


def _buckets(labels: Sequence[str | None], hourly: bool) -> list[str]:
    """Every day (or hour) from the first to the last label, gaps included, so time reads evenly."""
    present = sorted({label for label in labels if label})
    if not present:
        return []
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    parse = (lambda text: datetime.strptime(text, "%Y-%m-%dT%H:00Z")) if hourly else datetime.fromisoformat
    try:
        first, last = parse(present[0]), parse(present[-1])
    except ValueError:
        return present
    out: list[str] = []
    moment = first
    while moment <= last and len(out) < 10_000:
        out.append(moment.strftime("%Y-%m-%dT%H:00Z") if hourly else moment.date().isoformat())
        moment += step
    return out


def _spans_two_days_or_less(day_rows: Sequence[report.UsageRow]) -> bool:
    days = sorted(day for row in day_rows if (day := row.group.get("day")))
    if not days:
        return False
    try:
        return (datetime.fromisoformat(days[-1]) - datetime.fromisoformat(days[0])).days <= 1
    except ValueError:
        return False


def _table(usage: report.UsageReport, dimension: str) -> str:
    if not usage.rows:
        return '<p class="empty">No calls.</p>'
    head = "".join(
        f"<th>{escape(title)}</th>"
        for title in (
            dimension,
            "calls",
            "input",
            "cache read",
            "cache write",
            "output",
            "cost",
            "unpriced",
            "errors",
        )
    )
    body = []
    for row in sorted(usage.rows, key=lambda r: (-r.cost_usd, r.group[dimension] or "")):
        cells = [
            escape(row.group[dimension] or "(none)"),
            f"{row.calls:,}",
            f"{row.input_tokens:,}",
            f"{row.cache_read_tokens:,}",
            f"{row.cache_write_tokens:,}",
            f"{row.output_tokens:,}",
            escape(report.cost_text(_usd(float(row.cost_usd)), row)),
            f"{row.unpriced_calls:,}",
            f"{row.errors:,}",
        ]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _colour(position: int, name: str, colours: Mapping[str, str] | None) -> str:
    if name.startswith(OTHER):
        return "#bab0ac"
    if colours is not None:
        return colours.get(name, "#bab0ac")
    return PALETTE[position % len(PALETTE)]


def _window_text(since: datetime | None, until: datetime | None) -> str:
    def text(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")

    if since and until:
        return f"calls from {text(since)} to before {text(until)}"
    if since:
        return f"calls since {text(since)}"
    if until:
        return f"calls before {text(until)}"
    return "all recorded calls"
