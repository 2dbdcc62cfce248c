"""Draw dashboards/mcache.json from a Prometheus, without Grafana: each panel's queries (the
dashboard's own, variables filled in as for every host) run against the Prometheus's HTTP API
and drawn with matplotlib at the panel's place in the grid. A picture for the README from a
lab run (docs/dashboard.png), not a Grafana screenshot.

    python3 dashboards/render.py --prometheus http://127.0.0.1:9090 --minutes 5 \\
        --out docs/dashboard.png

tests/fleet/test_observability.py calls `render` at the end of its lab run when
MCACHE_DASHBOARD_PNG names a file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # (after the backend is chosen)

DASHBOARD = Path(__file__).resolve().with_name("mcache.json")
BG, PANEL, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
ROW_H = 0.6  # grid units a row title takes in the picture
TOP = 0.8  # and the picture's own title
LEFT, RIGHT = 0.75, 0.15  # room for the y axis' labels, and between panels


def _fill(expr: str, job: str, rate_interval: str) -> str:
    return (expr.replace("$job", job).replace("$instance", ".*")
            .replace("$__rate_interval", rate_interval))


def _get(base: str, path: str, **params: Any) -> Any:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())["data"]


def _legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def render(prometheus: str, out: Path, minutes: float = 10, job: str = "mcache",
           rate_interval: str = "1m", doc: dict[str, Any] | None = None) -> Path:
    doc = doc or json.loads(DASHBOARD.read_text())
    end = time.time()
    start = end - minutes * 60
    step = max(2.0, minutes * 60 / 300)
    panels = doc["panels"]
    # the grid, with row headers shrunk: y in grid units -> picture units
    ys = sorted({p["gridPos"]["y"] for p in panels})
    shift, offset = {}, -TOP  # the picture's title above the first row
    for y in ys:
        shift[y] = y - offset
        if any(p["type"] == "row" and p["gridPos"]["y"] == y for p in panels):
            offset += 1 - ROW_H
    height = max(shift[p["gridPos"]["y"]] + (ROW_H if p["type"] == "row" else p["gridPos"]["h"])
                 for p in panels)
    fig = plt.figure(figsize=(24, height * 0.62), facecolor=BG)
    fig.text(0.005, 1 - 0.3 / height, f"{doc['title']}  (rendered by dashboards/render.py from "
             f"the dashboard's queries, last {minutes:g} min; not a Grafana screenshot)",
             color=FG, fontsize=13, va="top")
    for p in panels:
        g = p["gridPos"]
        top = shift[g["y"]]
        if p["type"] == "row":
            fig.text(0.005, 1 - (top + 0.45) / height, p["title"], color="#6e9fff",
                     fontsize=14, weight="bold", va="center")
            continue
        pad = 0.12
        ax = fig.add_axes([(g["x"] + LEFT) / 24, 1 - (top + g["h"] - pad - 0.3) / height,
                           (g["w"] - LEFT - RIGHT) / 24, (g["h"] - 2 * pad - 0.85) / height])
        ax.set_facecolor(PANEL)
        for side in ax.spines.values():
            side.set_color(GRID)
        ax.tick_params(colors=FG, labelsize=7)
        ax.set_title(p["title"], color=FG, fontsize=10, loc="left")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        targets = p.get("targets") or []
        if p["type"] == "stat":
            _stat(ax, prometheus, targets, job, rate_interval, unit, end)
        elif p["type"] == "table":
            _table(ax, prometheus, targets, job, rate_interval, end)
        else:
            _lines(ax, prometheus, targets, job, rate_interval, unit, start, end, step)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=64, facecolor=BG)
    plt.close(fig)
    return out


def _stat(ax: Any, base: str, targets: list[dict[str, Any]], job: str, ri: str, unit: str,
          end: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    res = _get(base, "query", query=_fill(targets[0]["expr"], job, ri), time=end)["result"]
    if not res:
        text = "no data"
    else:
        v = float(res[0]["value"][1])
        text = f"{(end - v / 1000):.0f} s ago" if unit == "dateTimeFromNow" else f"{v:g}"
    ax.text(0.5, 0.45, text, color="#73bf69", fontsize=26, ha="center", va="center",
            transform=ax.transAxes)


def _table(ax: Any, base: str, targets: list[dict[str, Any]], job: str, ri: str,
           end: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    res = _get(base, "query", query=_fill(targets[0]["expr"], job, ri), time=end)["result"]
    keys = sorted({k for r in res for k in r["metric"]} - {"__name__", "job"})
    rows = [keys] + [[r["metric"].get(k, "") for k in keys] for r in
                     sorted(res, key=lambda r: r["metric"].get("instance", ""))]
    for i, row in enumerate(rows):
        ax.text(0.01, 0.9 - i * 0.14, "   ".join(f"{c:<14}"[:26] for c in row),
                color=FG if i else "#6e9fff", fontsize=8, family="monospace",
                transform=ax.transAxes, va="top")


def _lines(ax: Any, base: str, targets: list[dict[str, Any]], job: str, ri: str, unit: str,
           start: float, end: float, step: float) -> None:
    n = 0
    for t in targets:
        res = _get(base, "query_range", query=_fill(t["expr"], job, ri), start=start, end=end,
                   step=step)["result"]
        for r in res:
            xs = [(float(ts) - end) / 60 for ts, _v in r["values"]]
            ys = [float(v) for _ts, v in r["values"]]
            ax.plot(xs, ys, linewidth=1.2, label=_legend(t.get("legendFormat", ""), r["metric"]))
            n += 1
    ax.grid(color=GRID, linewidth=0.5)
    ax.set_xlim((start - end) / 60, 0)
    ax.set_xlabel("minutes", color=FG, fontsize=7, labelpad=1)
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    if n:
        ax.legend(fontsize=6, loc="upper left", facecolor=PANEL, labelcolor=FG,
                  edgecolor=GRID, ncol=2 if n > 4 else 1, framealpha=0.7)
    else:
        ax.text(0.5, 0.5, "no data", color=FG, ha="center", transform=ax.transAxes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    p.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--job", default="mcache")
    a = p.parse_args(argv)
    print(render(a.prometheus, a.out, a.minutes, a.job))
    return 0


if __name__ == "__main__":
    sys.exit(main())
