"""PNG plots of a result: throughput and mean latency per scenario, A/B bars (and D's, BMC, when
the run has round D), the limit C drawn."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, out: Path, mode: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["scenarios"])
    if not names:
        return []
    bars = [("A", "#888888", "A: stock memcached"), ("B", "#1f77b4", "B: mcache")]
    if any("D" in results["scenarios"][n]["summary"] for n in names):
        bars.append(("D", "#2ca02c", "D: BMC (peer)"))
    width = 0.38 if len(bars) == 2 else 0.27
    paths = []
    for metric, label, fname in (("ops_per_s", "throughput (ops/s, median)", "throughput"),
                                 ("mean_us", "mean latency (us, median)", "latency")):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4.5))
        labelled = set()
        for i, n in enumerate(names):
            s = results["scenarios"][n]["summary"]
            for j, (m, color, lab) in enumerate(bars):
                if m not in s:
                    continue
                v = s[m][metric] or 0
                lo = s[m].get(f"{metric}_min", v) or 0
                hi = s[m].get(f"{metric}_max", v) or 0
                ax.bar(i + (j - (len(bars) - 1) / 2) * width, v, width, color=color,
                       yerr=[[max(0, v - lo)], [max(0, hi - v)]], capsize=3,
                       label=lab if m not in labelled else None)
                labelled.add(m)
            if "C" in s and s["C"][metric]:
                c = s["C"][metric]
                half = width * len(bars) / 2
                ax.hlines(c, i - half, i + half, colors="#d62728", linestyles="--", linewidth=2,
                          label="C: limit (XDP reflector)" if "lim" not in ax.__dict__ else None)
                ax.__dict__["lim"] = True
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"mcache {fname} by scenario ({mode}; bars: median, whiskers: min-max)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"{mode}-{fname}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths
