"""The report's PNGs: accuracy vs latency and vs size (numbered points with a legend
beside the axes, so labels never overlap; the Pareto front in red), per-layer sparsity
bars for pruned stages, and each stage's training curves."""
import json
import os

from tfdeploy import objectives
from tfdeploy.report.records import artifacts, batch_sizes, latency


def all_plots(summary, run_dir):
    import matplotlib
    matplotlib.use("Agg")

    written = []
    records = artifacts(summary)
    batches = batch_sizes(records)
    if batches:
        b = batches[0]
        written += scatter(summary, run_dir, lambda r: latency(r, b),
                           f"median latency, batch {b} (ms)", "accuracy_vs_latency.png")
    written += scatter(summary, run_dir, lambda r: (r.get("size_bytes") or 0) / 1e6 or None,
                       "size (MB)", "accuracy_vs_size.png")
    for rec in (r for r in summary["records"] if r["artifact"] == "keras"):
        layers = (rec.get("stage_report") or {}).get("layers")
        if isinstance(layers, dict) and layers and all(
                isinstance(v, (int, float)) for v in layers.values()):
            written.append(sparsity_bars(rec["stage"], layers, run_dir))
        history = find_history(run_dir, rec["stage"])
        if history:
            written.append(curves(rec["stage"], history, run_dir))
    return [p for p in written if p]


def pareto(points):
    """Indices of points not dominated (lower x, higher y is better)."""
    return [i for i, (x, y) in enumerate(points)
            if not any(x2 <= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]


def save(fig, path):
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def scatter(summary, run_dir, x_of, label, name):
    import matplotlib.pyplot as plt

    pts, names, metric, sign = [], [], "accuracy", 1
    for r in artifacts(summary):
        x = x_of(r)
        if x:
            pts.append((x, objectives.value(r)))
            names.append(f"{r['artifact']} ({r['stage']})")
            metric = objectives.of(r).name
            sign = 1 if objectives.of(r).higher_is_better else -1
    if not pts:
        return []
    import math

    front = set(pareto([(x, sign * y) for x, y in pts]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [x for x, _ in pts]
    log = max(xs) / min(xs) > 10
    if log:
        ax.set_xscale("log")
    span = (max(y for _, y in pts) - min(y for _, y in pts)) or 1.0
    placed = []
    for i, ((x, y), text) in enumerate(zip(pts, names), start=1):
        on_front = i - 1 in front
        color = "tab:red" if on_front else "tab:blue"
        ax.scatter([x], [y], s=14, color=color, zorder=3)
        # points that (nearly) coincide get their numbers stacked above, with a leader
        near = sum(1 for px, py in placed if abs(py - y) < 0.03 * span and
                   abs((math.log(px / x) if log else (px - x) / (max(xs) or 1))) < 0.04)
        placed.append((x, y))
        ax.annotate(str(i), (x, y), xytext=(0, 8 + 11 * near), textcoords="offset points",
                    ha="center", fontsize=8, color=color, zorder=4,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=color) if near else None)
        ax.scatter([], [], s=0, label=f"{i}  {text}{'  *' if on_front else ''}")
    line = sorted(pts[i] for i in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], "r--", lw=1, zorder=2)
    ax.set_xlabel(label)
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{summary['recipe']}: {metric} vs {label.split(' (')[0].split(',')[0]} "
                 f"(* Pareto front)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False,
              handlelength=0, handletextpad=0)
    ax.grid(alpha=0.3)
    return [save(fig, os.path.join(run_dir, name))]


def sparsity_bars(stage, layers, run_dir):
    import matplotlib.pyplot as plt

    names = list(layers)
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.22 * len(names) + 1)))
    ax.barh(range(len(names)), [layers[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of weights that are zero")
    ax.set_title(f"stage {stage}: sparsity per layer")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, os.path.join(run_dir, f"sparsity_{stage}.png"))


def find_history(run_dir, stage):
    """The stage's history.json: in this run's stage folder, or where a cached stage came
    from."""
    for entry in sorted(os.listdir(run_dir)):
        folder = os.path.join(run_dir, entry)
        if not os.path.isdir(folder) or entry.split("-", 1)[-1] != stage:
            continue
        cached = os.path.join(folder, "cached.json")
        if os.path.exists(cached):
            with open(cached, encoding="utf-8") as f:
                source = json.load(f).get("from", "")
            folder = next((p for p in (os.path.join(folder, source), source)
                           if source and os.path.isdir(p)), folder)
        path = os.path.join(folder, "history.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    return None


def curves(stage, history, run_dir):
    import matplotlib.pyplot as plt

    series = {k: v for k, v in history.items() if isinstance(v, list) and v}
    if not series:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    metric = next((k for k in ("accuracy", "rmse", "auc") if k in series), "accuracy")
    for key, axis in (("loss", left), ("val_loss", left), (metric, right),
                      ("val_" + metric, right)):
        if key in series:
            steps = [(i + 1) * history.get("steps", len(series[key])) / len(series[key])
                     for i in range(len(series[key]))]
            axis.plot(steps, series[key], marker="o", label=key.replace("val_", "selection "))
    for axis, what in ((left, "loss"), (right, metric)):
        axis.set_xlabel("step")
        axis.set_title(f"stage {stage}: {what}")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return save(fig, os.path.join(run_dir, f"train_{stage}.png"))
