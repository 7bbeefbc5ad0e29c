"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import io

from replicate.report.copy_curve import families_in, resampled_fit
from replicate.tables import duration, money, num

STAGE_COLORS = {"generate": "#4c72b0", "finetune": "#dd8452", "evaluate": "#55a868"}
FAMILY_COLORS = {"style": "#c44e52", "fidelity": "#4c72b0", "token": "#8172b3", "capability": "#55a868"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def cost_breakdown(rep: dict) -> bytes:
    """Measured dollars and device-hours per stage, side by side (each bar in its stage's colour,
    named on the axis: no legend to mismatch)."""
    import matplotlib.pyplot as plt

    stages = [s for s in rep["stages"] if s["measured"]]
    fig, axes = plt.subplots(1, 2, figsize=(9, 2.8), sharey=True)
    for ax, key, label, fmt in ((axes[0], "usd", "measured cost (USD)", money),
                                (axes[1], "device_hours", "measured device-hours", num)):
        names = [s["stage"] for s in stages]
        vals = [s["measured"].get(key) or 0 for s in stages]
        ax.barh(names, vals, color=[STAGE_COLORS.get(n, "grey") for n in names])
        total = sum(vals) or 1
        for i, v in enumerate(vals):
            ax.text(v, i, f" {fmt(v)} ({100 * v / total:.0f}%)", va="center", fontsize=9)
        ax.set_xlabel(label)
        ax.set_xlim(0, max(vals + [1e-9]) * 1.6)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _p, f=fmt: f(x)))
        ax.tick_params(axis="x", labelsize=8)
    axes[0].invert_yaxis()  # shared y: inverting once puts generate on top in both
    fig.suptitle("Cost breakdown by stage")
    return _png(fig)


ESTIMATE_COLOR, MEASURED_COLOR = "#bbbbbb", "#4c72b0"


def estimate_vs_measured(rep: dict) -> bytes:
    """Grouped bars per stage: estimated (grey) vs measured (blue) wall time and dollars, the
    ratio measured / estimate on top. One colour per series, so the legend matches every bar."""
    import matplotlib.pyplot as plt
    import numpy as np

    stages = rep["stages"]
    names = [s["stage"] for s in stages]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key, label, fmt in ((axes[0], "wall_s", "wall time", duration), (axes[1], "usd", "cost (USD)", money)):
        est = [s["estimate"].get(key) or 0 for s in stages]
        mea = [s["measured"].get(key) or 0 for s in stages]
        ax.bar(x - 0.2, est, 0.4, label="estimate", color=ESTIMATE_COLOR)
        ax.bar(x + 0.2, mea, 0.4, label="measured", color=MEASURED_COLOR)
        for i, s in enumerate(stages):
            r = s["ratio"].get(key)
            ax.text(i, max(est[i], mea[i]), f"{r:.2f}x" if r else "no estimate" if not s["estimate"] else "",
                    ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, names)
        ax.set_ylabel(label)
        ax.set_ylim(0, max(est + mea + [1e-9]) * 1.25)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _p, f=fmt: f(v)))
        ax.tick_params(axis="y", labelsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("Estimate vs measured (label: measured / estimate)")
    fig.tight_layout()
    return _png(fig)


def copy_curve(sw: dict) -> bytes:
    """gap_closed vs teacher examples per family, with 95% intervals (hollow = gap not measurable
    at that size), the fitted saturating curve, the 25/50/80 % lines of the copy-risk card, and a
    dollar axis on top (measured dollars per copy at this scale)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.2))
    pts = sw["points"]
    ns = np.array([p["examples"] for p in pts], dtype=float)
    for fam in families_in(pts):
        color = FAMILY_COLORS.get(fam, "grey")
        have = [p for p in pts if (p["families"].get(fam) or {}).get("gap_closed") is not None]
        if not have:
            continue
        x = np.array([p["examples"] for p in have], float)
        y = np.array([p["families"][fam]["gap_closed"] for p in have])
        cis = [p["families"][fam].get("ci") or [None, None] for p in have]
        lo = np.array([y[i] - c[0] if c[0] is not None else 0 for i, c in enumerate(cis)])
        hi = np.array([c[1] - y[i] if c[1] is not None else 0 for i, c in enumerate(cis)])
        ax.errorbar(x, y, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], fmt="none", ecolor=color, capsize=3)
        solid = np.array([p["families"][fam].get("gap_measurable") is not False for p in have])
        ax.scatter(x[solid], y[solid], color=color, label=fam, zorder=3)
        ax.scatter(x[~solid], y[~solid], facecolors="none", edgecolors=color, zorder=3)
        if len(have) >= 2:
            fit = resampled_fit(have, fam)
            grid = np.geomspace(ns.min() / 2, ns.max() * 4, 100)
            ax.plot(grid, fit["g_max"] * grid / (grid + fit["n50"]), color=color, alpha=0.6, lw=1.2)
    for f in (0.25, 0.5, 0.8):
        ax.axhline(f, color="grey", ls=":", lw=0.8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("teacher examples (fine-tuning set size)")
    ax.set_ylabel("gap closed (0 = base, 1 = ceiling)")
    a, b = sw.get("usd_per_example_fit") or (0.0, 0.0)
    if b > 0:
        # usd(n) = a + b*n, the measured cost of one copy of the sweep at this scale.
        sec = ax.secondary_xaxis("top", functions=(lambda n: a + b * np.asarray(n), lambda u: (np.asarray(u) - a) / b))
        sec.set_xlabel("measured $ per copy at this scale")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="best", title="lines: g(n) = g_max n / (n + n50); hollow: not measurable",
                  title_fontsize=8)
    else:  # no family had a defined gap_closed (e.g. teacher and base score the same)
        ax.text(0.5, 0.5, "gap_closed undefined at every size", transform=ax.transAxes, ha="center")
    return _png(fig)


def gap_closed(ev: dict) -> bytes:
    """Each family's gap closed and the illusion gaps, with 95% intervals; hollow = not measurable."""
    import matplotlib.pyplot as plt

    rows = [(fam, v["gap_closed"], v.get("ci"), v.get("gap_measurable"), FAMILY_COLORS.get(fam, "grey"))
            for fam, v in ev["families"].items() if v.get("gap_closed") is not None]
    for key, label in (("illusion_gap", "illusion gap (fidelity - capability)"),
                       ("illusion_gap_style", "illusion gap (style - capability)")):
        if ev.get(key) is not None:
            rows.append((label, ev[key], ev.get(key + "_ci"), ev.get(key + "_measurable"), "black"))
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(rows), 1)))
    for i, (label, g, ci, measurable, color) in enumerate(rows):
        if ci and ci[0] is not None:
            ax.plot(ci, [i, i], color=color, lw=2, alpha=0.7)
        ax.scatter([g], [i], color="white" if measurable is False else color, edgecolors=color, zorder=3, s=40)
    ax.set_yticks(range(len(rows)), [r[0] + ("" if r[3] is not False else " (not measurable)") for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.5)
    ax.axvline(1, color="grey", ls=":", lw=1)
    ax.set_xlabel("gap closed [95% CI] (0 = base, 1 = ceiling)")
    ax.set_title("How much of the teacher was copied", fontsize=10)
    return _png(fig)


def all_plots(rep: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    out = {}
    if any(s["measured"] for s in rep["stages"]):
        out["cost_breakdown"] = cost_breakdown(rep)
    if rep["stages"]:
        out["estimate_vs_measured"] = estimate_vs_measured(rep)
    if rep.get("sweep") and rep["sweep"]["points"]:
        out["copy_curve"] = copy_curve(rep["sweep"])
    if rep.get("evaluation") and rep["evaluation"]["families"]:
        out["gap_closed"] = gap_closed(rep["evaluation"])
    return out
