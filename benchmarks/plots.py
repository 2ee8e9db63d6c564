"""PNG plots of a run (matplotlib, Agg backend): ratios, times, accuracy, bandwidth."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.cases import CASES
from benchmarks.report import SPEED_TARGETS

MODES = ("eager", "function", "xla")
IMPL_COLORS = {"stableops": "tab:blue", "keras": "tab:orange", "tf.nn": "tab:green"}
MODE_STYLES = {"eager": ":", "function": "--", "xla": "-"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speed_ratio(speed: dict, path: Path) -> bool:
    ratios = [
        r
        for r in speed.get("ratios", [])
        if (r["impl"], r["baseline"], r["dtype"]) == ("stableops", "keras", "float32")
    ]
    if not ratios:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), sharey=True)
    cmap = plt.get_cmap("tab20")
    for ax, mode in zip(axes, MODES):
        for i, case in enumerate(CASES):
            rows = sorted(
                (r for r in ratios if r["case"] == case.name and r["mode"] == mode),
                key=lambda r: r["size"],
            )
            if rows:
                ax.plot(
                    [math.log2(r["size"]) for r in rows],
                    [r["ratio"]["median"] for r in rows],
                    marker="o",
                    ms=3,
                    color=cmap(i % 20),
                    linestyle="-" if case.kind == "loss" else "--",
                    label=case.name,
                )
        ax.axhline(1.0, color="black", lw=0.8)
        _, limit, min_size = SPEED_TARGETS[mode]
        ax.axhline(
            limit,
            color="red",
            lw=0.8,
            ls=":",
            label=f"target {limit:.2f} (>= 2^{int(math.log2(min_size))})",
        )
        ax.set_yscale("log")
        ax.set_title(f"{mode}: stableops / Keras (float32)")
        ax.set_xlabel("log2(elements)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time ratio (below 1: stableops faster)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        extra = [
            (h, lab) for h, lab in zip(*ax.get_legend_handles_labels()) if lab.startswith("target")
        ]
        handles += [h for h, lab in extra if lab not in labels]
        labels += [lab for _, lab in extra if lab not in labels]
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_speed_times(speed: dict, path: Path) -> bool:
    timings = [t for t in speed.get("timings", []) if t["dtype"] == "float32"]
    names = [c.name for c in CASES if any(t["case"] == c.name for t in timings)]
    if not names:
        return False
    plt = _pyplot()
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for impl, color in IMPL_COLORS.items():
            for mode, style in MODE_STYLES.items():
                pts = [
                    t for t in timings if (t["case"], t["impl"], t["mode"]) == (name, impl, mode)
                ]
                pts.sort(key=lambda t: t["size"])
                if pts:
                    ax.plot(
                        [t["size"] for t in pts],
                        [t["seconds"]["median"] / t["size"] * 1e9 for t in pts],
                        color=color,
                        linestyle=style,
                        marker=".",
                        label=f"{impl} {mode}",
                    )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("ns / element", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=9, fontsize=8)
    fig.suptitle("forward + backward time per element (float32; lower is faster)")
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _ulp_value(value) -> float:
    return float(value)  # JSON keeps infinities as the string "inf"


def plot_accuracy(accuracy: dict, path: Path) -> bool:
    rows = [
        r
        for r in accuracy.get("rows", [])
        if r.get("dtype") == "float32" and r.get("mode") == "eager" and "error" not in r
    ]
    names = [c.name for c in CASES if any(r["case"] == c.name for r in rows)]
    if not names:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.5))
    width = 0.27
    cap = 1e12  # infinite errors drawn at the cap
    for k, impl in enumerate(IMPL_COLORS):
        ys, xs = [], []
        for i, name in enumerate(names):
            match = [r for r in rows if (r["case"], r["impl"]) == (name, impl)]
            if match:
                worst = max(
                    _ulp_value(match[0]["max_ulp_grid"]), _ulp_value(match[0]["max_ulp_random"])
                )
                xs.append(min(max(worst, 0.1), cap))
                ys.append(i + (k - 1) * width)
        ax.barh(ys, xs, height=width, color=IMPL_COLORS[impl], label=impl)
    ax.axvline(2.0, color="red", ls=":", lw=0.8, label="2 ULP")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(
        f"max error, ULPs of float32 (grid and random sample; < 0.1 drawn at 0.1, inf at {cap:.0e})"
    )
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_bandwidth(speed: dict, bandwidth: dict, path: Path) -> bool:
    from benchmarks.bandwidth import limits_table

    timings = [t for t in speed.get("timings", []) if t["dtype"] == "float32"]
    if not timings:
        return False
    largest = max(t["size"] for t in timings)
    rows = [
        r
        for r in limits_table(speed, bandwidth, CASES, largest)
        if r["dtype"] == "float32" and r["mode"] in ("eager", "xla")
    ]
    names = [c.name for c in CASES if any(r["case"] == c.name for r in rows)]
    if not names:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.5))
    keys = [(impl, mode) for impl in IMPL_COLORS for mode in ("eager", "xla")]
    width = 0.8 / len(keys)
    for k, (impl, mode) in enumerate(keys):
        ys, xs = [], []
        for i, name in enumerate(names):
            match = [r for r in rows if (r["case"], r["impl"], r["mode"]) == (name, impl, mode)]
            if match:
                share = match[0].get("fraction_of_copy", match[0]["fraction_of_limit"])
                if share is None:
                    continue
                ys.append(i - 0.4 + (k + 0.5) * width)
                xs.append(100 * share)
        if xs:
            alpha = 1.0 if mode == "xla" else 0.45
            ax.barh(
                ys, xs, height=width, color=IMPL_COLORS[impl], alpha=alpha, label=f"{impl} {mode}"
            )
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.axvline(100, color="black", lw=0.8)
    ax.set_xlabel(
        f"traffic rate, percent of a numpy copy of the same traffic timed in the same rounds "
        f"(2^{int(math.log2(largest))} float32)"
    )
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_plots(sections: dict, out: Path) -> list[str]:
    """Write every plot the available sections allow; returns the file names written."""
    speed = sections.get("speed", {}).get("data", {})
    written = []
    if plot_speed_ratio(speed, out / "speed_ratio.png"):
        written.append("speed_ratio.png")
    if plot_speed_times(speed, out / "speed_times.png"):
        written.append("speed_times.png")
    if plot_accuracy(sections.get("accuracy", {}).get("data", {}), out / "accuracy.png"):
        written.append("accuracy.png")
    if plot_bandwidth(speed, sections.get("bandwidth", {}).get("data"), out / "bandwidth.png"):
        written.append("bandwidth.png")
    return written
