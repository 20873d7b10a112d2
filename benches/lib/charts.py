#!/usr/bin/env python3
"""charts.py: SVG charts of a compare.sh run, drawn from its results.tsv (no hand-drawn figure).

Usage:   benches/lib/charts.py RUN_DIR [OUT_DIR]
         (RUN_DIR holds results.tsv, as compare.sh leaves it in target/compare/<timestamp>/;
         OUT_DIR defaults to RUN_DIR/charts). compare.sh calls it at the end of every run.
         benches/lib/charts.py --memory RUN_DIR [OUT_DIR]
         (RUN_DIR holds idle.tsv, as memory.sh leaves it in target/memory/<timestamp>/):
         rss-by-routes.svg, idle RSS by route count, ours and HAProxy, by worker threads.

Draws, for the request classes the run measured (the paced GET and each class of the
"classes" scenario), one grouped bar chart each of:
  cpu-per-request.svg  the proxy's CPU time per request (µs), ours / HAProxy / nginx
  throughput.svg       requests per second
  latency.svg          p50 and p99 latency (µs) per proxy, where the load tool reports them
Each bar is the median over the run's rounds, its whisker the min–max, as BENCHMARKS.md's
tables give them. And, where the run has them:
  latency-distribution.svg  p50, p90, p99 and p99.9 per proxy, one panel per class (medians
                       over the rounds, log scale)
  churn-timeline.svg   requests per second in each 100 ms of a run while the routes change every
                       100 ms (compare.sh's churn scenario: timeline-ours.tsv, timeline-haproxy.tsv),
                       failed requests marked
Plain Python 3, standard library only.

results.tsv columns (tab-separated): scenario mode round target req/s p50_us p99_us errors
cpu_us_per_request requests extra core0_us core0_busy core1_busy user_us p90_us p999_us (the last
two absent in runs before they were added).
"""

import csv
import html
import math
import os
import statistics
import sys

PROXIES = [("ours", "docker-flow-proxy", "#1f5fb4"), ("haproxy", "HAProxy", "#b35900"), ("nginx", "nginx", "#3c7d3c")]
CLASS_NAMES = {
    ("compare", "paced"): "plain GET (paced)",
    ("compare", "closed"): "plain GET (closed loop)",
    ("classes", "https"): "HTTPS keep-alive",
    ("classes", "handshake"): "full TLS handshake",
    ("classes", "h2"): "HTTP/2 (h2load)",
    ("classes", "post-1k"): "POST 1 KiB",
    ("classes", "post-64k"): "POST 64 KiB",
    ("classes", "options"): "service with options",
    ("classes", "websocket"): "WebSocket messages",
}


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read(run_dir):
    """{(scenario, mode): {target: {column: [values over rounds]}}} of the classes charted."""
    found = {}
    with open(os.path.join(run_dir, "results.tsv"), newline="") as tsv:
        for row in csv.reader(tsv, delimiter="\t"):
            if len(row) < 9:
                continue
            scenario, mode, _round, target = row[0], row[1], row[2], row[3]
            if (scenario, mode) not in CLASS_NAMES:
                continue
            figures = {"rps": number(row[4]), "p50": number(row[5]), "p99": number(row[6]), "cpu": number(row[8])}
            if len(row) >= 17:
                figures["p90"], figures["p999"] = number(row[15]), number(row[16])
            per_target = found.setdefault((scenario, mode), {}).setdefault(target, {})
            for key, value in figures.items():
                if value is not None:
                    per_target.setdefault(key, []).append(value)
    order = list(CLASS_NAMES)
    return dict(sorted(found.items(), key=lambda item: order.index(item[0])))


def summary(values):
    """(median, min, max) or None."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def nice_max(value):
    """A round axis maximum at or above value."""
    if value <= 0:
        return 1
    step = 10 ** len(str(int(value))) / 10
    for factor in (1, 2, 2.5, 5, 10):
        if value <= step * factor:
            return step * factor
    return step * 10


def bar_chart(title, unit, groups, series):
    """groups: [label]; series: [(name, colour, [summary or None per group])] -> SVG text."""
    width, height = 860, 380
    left, right, top, bottom = 70, 20, 50, 90
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = nice_max(max((s[2] for _, _, vals in series for s in vals if s), default=1))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="{left}" y="40" fill="#444">{html.escape(unit)}; bar: median over the rounds, whisker: min–max</text>',
    ]
    for i in range(6):
        value = top_value * i / 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{value:g}</text>')
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    for g, label in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, (name, colour, values) in enumerate(series):
            point = values[g]
            if not point:
                continue
            median, low, high = point
            x = x0 + s * bar_w
            h = plot_h * median / top_value
            y = top + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" fill="{colour}">'
                       f'<title>{html.escape(name)}, {html.escape(label)}: {median:g} ({low:g}–{high:g})</title></rect>')
            cx = x + bar_w * 0.45
            y_low, y_high = top + plot_h - plot_h * low / top_value, top + plot_h - plot_h * high / top_value
            out.append(f'<line x1="{cx:.1f}" y1="{y_low:.1f}" x2="{cx:.1f}" y2="{y_high:.1f}" stroke="#222"/>')
        out.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{html.escape(label)}</text>')
    per_row = max(1, (width - left) // 250)
    for s, (name, colour, _) in enumerate(series):
        x = left + (s % per_row) * 250
        y = height - 48 + (s // per_row) * 20
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{y}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_head(width, height, title, subtitle):
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="20" y="22" font-size="15" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="20" y="40" fill="#444">{html.escape(subtitle)}</text>',
    ]


def legend(out, series, x0, y):
    for s, (name, colour) in enumerate(series):
        x = x0 + s * 200
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{x + 18}" y="{y}">{html.escape(name)}</text>')


QUANTILES = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]


def latency_distribution(classes):
    """One panel per class with p99.9 figures: the quantiles' medians per proxy, log scale."""
    keys = [k for k in classes if any(classes[k].get(t, {}).get("p999") for t, _, _ in PROXIES)]
    if not keys:
        return None
    panel_w, panel_h, per_row = 280, 230, 3
    rows = (len(keys) + per_row - 1) // per_row
    width, height = panel_w * per_row + 20, 60 + rows * (panel_h + 30) + 30
    out = svg_head(width, height, "Latency distribution", "µs, log scale (less is better); point: median over the rounds")
    values = [v for k in keys for t, _, _ in PROXIES for q, _ in QUANTILES
              for v in classes[k].get(t, {}).get(q, []) if v and v > 0]
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))
    span = math.log10(high) - math.log10(low) or 1
    for i, key in enumerate(keys):
        x0 = 20 + (i % per_row) * panel_w + 50
        y0 = 60 + (i // per_row) * (panel_h + 30)
        w, h = panel_w - 70, panel_h - 50
        out.append(f'<text x="{x0}" y="{y0 + 12}" font-weight="bold">{html.escape(CLASS_NAMES[key])}</text>')
        top = y0 + 22
        decade = low
        while decade <= high:
            y = top + h - h * (math.log10(decade) - math.log10(low)) / span
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
            label = f"{decade / 1000:g} ms" if decade >= 1000 else f"{decade:g} µs"
            out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{label}</text>')
            decade *= 10
        step = w / (len(QUANTILES) - 1)
        for q, (_, label) in enumerate(QUANTILES):
            out.append(f'<text x="{x0 + q * step:.1f}" y="{top + h + 16}" text-anchor="middle">{label}</text>')
        for target, name, colour in PROXIES:
            points = []
            for q, (column, label) in enumerate(QUANTILES):
                got = summary(classes[key].get(target, {}).get(column, []))
                if got and got[0] > 0:
                    y = top + h - h * (math.log10(got[0]) - math.log10(low)) / span
                    points.append((x0 + q * step, y, f"{name} {label}: {got[0]:g} µs ({got[1]:g}–{got[2]:g})"))
            if len(points) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
                out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for x, y, tip in points:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"><title>{html.escape(tip)}</title></circle>')
    legend(out, [(name, colour) for _, name, colour in PROXIES], 70, height - 14)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def read_timeline(path):
    """[(start_ms, completed, failed)] from a dfp-load --timeline file."""
    rows = []
    with open(path, newline="") as tsv:
        for row in csv.reader(tsv, delimiter="\t"):
            if len(row) >= 3 and all(number(v) is not None for v in row[:3]):
                rows.append((number(row[0]), number(row[1]), number(row[2])))
    return rows


def churn_timeline(run_dir):
    """Requests per second in each slice of the churn timelines, ours and HAProxy."""
    lines = []
    for target, name, colour in PROXIES:
        path = os.path.join(run_dir, f"timeline-{target}.tsv")
        if os.path.exists(path):
            rows = read_timeline(path)
            if len(rows) > 1:
                lines.append((name, colour, rows))
    if not lines:
        return None
    width, height = 860, 360
    left, right, top, bottom = 80, 20, 50, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    slice_ms = lines[0][2][1][0] - lines[0][2][0][0] or 100
    per_second = 1000 / slice_ms
    end_ms = max(rows[-1][0] + slice_ms for _, _, rows in lines)
    top_value = nice_max(max(done * per_second for _, _, rows in lines for _, done, _ in rows))
    out = svg_head(width, height, "Throughput while the routes change every 100 ms",
                   f"requests/s in each {slice_ms:g} ms (ours: a reconfigure call; HAProxy: a reload); red: failed requests in that slice")
    for i in range(6):
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{top_value * i / 5:,.0f}</text>')
    for second in range(0, int(end_ms / 1000) + 1):
        x = left + plot_w * second * 1000 / end_ms
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#444">{second} s</text>')
    for name, colour, rows in lines:
        path = " ".join(f"{left + plot_w * (ms + slice_ms / 2) / end_ms:.1f},{top + plot_h - plot_h * done * per_second / top_value:.1f}"
                        for ms, done, _ in rows)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"><title>{html.escape(name)}</title></polyline>')
        for ms, done, failed in rows:
            if failed:
                x = left + plot_w * (ms + slice_ms / 2) / end_ms
                y = top + plot_h - plot_h * done * per_second / top_value
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#d00000"><title>{html.escape(name)}: '
                           f'{failed:g} failed at {ms / 1000:.1f} s</title></circle>')
    totals = [(f"{name} ({sum(f for _, _, f in rows):g} failed)", colour) for name, colour, rows in lines]
    legend(out, totals, left, height - 16)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def memory(run_dir, out_dir):
    """rss-by-routes.svg from memory.sh's idle.tsv: proxy threads routes ready_s rss_kib ..."""
    rows = {}
    with open(os.path.join(run_dir, "idle.tsv"), newline="") as tsv:
        for row in csv.reader(tsv, delimiter="\t"):
            if len(row) < 5 or number(row[4]) is None:
                continue
            proxy, threads, routes = row[0], row[1], int(row[2])
            rows.setdefault((proxy, threads), {}).setdefault(routes, []).append(number(row[4]) * 1024 / 1e6)
    if not rows:
        sys.exit(f"charts.py: no idle RSS in {run_dir}/idle.tsv")
    counts = sorted({routes for per in rows.values() for routes in per})
    # The colours of the other charts: ours blue, HAProxy orange; lighter with more threads.
    colours = {"ours": ("#1f5fb4", "#6f9fe0"), "haproxy": ("#b35900", "#e0a060")}
    names = {"ours": "docker-flow-proxy", "haproxy": "HAProxy"}
    rank = {"ours": 0, "haproxy": 1}
    series = []
    for (proxy, threads), per in sorted(rows.items(), key=lambda item: (rank.get(item[0][0], 2), item[0][1] != "1")):
        shades = colours.get(proxy, ("#3c7d3c", "#8bc48b"))
        label = f"{names.get(proxy, proxy)}, {'1 thread' if threads == '1' else threads + ' threads'}"
        series.append((label, shades[0] if threads == "1" else shades[1], [summary(per.get(c, [])) for c in counts]))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "rss-by-routes.svg"), "w") as svg:
        svg.write(bar_chart("Idle resident memory by route count", "MB of VmRSS (less is better)",
                            [f"{c:,} route{'' if c == 1 else 's'}" for c in counts], series))
    print(f"charts.py: idle RSS of {len(counts)} route counts in {out_dir}", file=sys.stderr)


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "--memory":
        if len(sys.argv) not in (3, 4):
            sys.exit(__doc__)
        memory(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else os.path.join(sys.argv[2], "charts"))
        return
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    run_dir = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) == 3 else os.path.join(run_dir, "charts")
    classes = read(run_dir)
    timeline = churn_timeline(run_dir)
    if not classes and not timeline:
        sys.exit(f"charts.py: no request class in {run_dir}/results.tsv and no churn timeline")
    os.makedirs(out_dir, exist_ok=True)
    if classes:
        class_charts(classes, out_dir)
    if timeline:
        with open(os.path.join(out_dir, "churn-timeline.svg"), "w") as svg:
            svg.write(timeline)
    print(f"charts.py: charts of {len(classes)} classes{' and the churn timeline' if timeline else ''} in {out_dir}",
          file=sys.stderr)


def class_charts(classes, out_dir):
    """The bar charts and the latency distribution of the request classes."""
    groups = [CLASS_NAMES[key] for key in classes]
    charts = {
        "cpu-per-request.svg": ("CPU per request, proxy on one core", "µs of CPU per request (less is better)", "cpu"),
        "throughput.svg": ("Requests per second", "requests/s (more is better)", "rps"),
    }
    for file, (title, unit, column) in charts.items():
        series = [(name, colour, [summary(classes[key].get(target, {}).get(column, [])) for key in classes])
                  for target, name, colour in PROXIES]
        with open(os.path.join(out_dir, file), "w") as svg:
            svg.write(bar_chart(title, unit, groups, series))
    # Latency: p50 and p99 side by side per proxy, for the classes whose load tool reports them.
    with_latency = [key for key in classes if any(classes[key].get(t, {}).get("p99") for t, _, _ in PROXIES)]
    if with_latency:
        series = []
        for target, name, colour in PROXIES:
            for quantile, shade in (("p50", colour), ("p99", colour + "99")):
                values = [summary(classes[key].get(target, {}).get(quantile, [])) for key in with_latency]
                series.append((f"{name} {quantile}", shade, values))
        with open(os.path.join(out_dir, "latency.svg"), "w") as svg:
            svg.write(bar_chart("Latency (p50 and p99)", "µs (less is better)", [CLASS_NAMES[k] for k in with_latency], series))
    distribution = latency_distribution(classes)
    if distribution:
        with open(os.path.join(out_dir, "latency-distribution.svg"), "w") as svg:
            svg.write(distribution)


if __name__ == "__main__":
    main()
