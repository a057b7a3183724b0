"""report.md (one stage x artifact table) and PNG plots of accuracy vs latency and size."""
import os


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def _latency(rec, batch):
    return (rec.get("latency") or {}).get(f"batch_{batch}")


def markdown(summary, plots=()):
    records = summary["records"]
    keras = [r for r in records if r["artifact"] == "keras"]
    baseline = keras[0]["metrics"]["accuracy"] if keras else None
    batches = sorted({int(k[6:]) for r in records for k in (r.get("latency") or {})})
    lines = [f"# {summary['recipe']}", "",
             f"Run directory `{summary['run_dir']}`, {summary['seconds']} s, strategy "
             f"{summary['strategy']['strategy']} ({summary['strategy']['replicas']} replica(s)).",
             "", "Drop: against the fp32 baseline (first stage's Keras model). Agreement and "
             "max diff: artifact vs the Keras model of the same stage. Latency: median / p90 "
             "ms, ratio of medians to the TF SavedModel.", ""]
    header = ["stage", "artifact", "runtime", "accuracy", "drop", "agreement", "max diff",
              "size MB", "gzip MB"]
    for b in batches:
        header += [f"b{b} median/p90 ms", f"b{b} ratio"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        acc = r["metrics"]["accuracy"]
        drop = None if baseline is None else baseline - acc
        size, gz = r.get("size_bytes"), r.get("gzip_bytes")
        row = [r["stage"], r["artifact"], r["runtime"], _fmt(acc, ".4f"), _fmt(drop, "+.4f"),
               _fmt(r.get("agreement"), ".4f"), _fmt(r.get("max_abs_diff"), ".1e"),
               _fmt(size and size / 1e6, ".1f"), _fmt(gz and gz / 1e6, ".1f")]
        for b in batches:
            lat = _latency(r, b)
            row += [f"{lat['median_ms']:.1f} / {lat['p90_ms']:.1f}" if lat else "",
                    _fmt(lat and lat["ratio"], ".2f")]
        lines.append("| " + " | ".join(row) + " |")
    for plot in plots:
        lines += ["", f"![{os.path.basename(plot)}]({os.path.basename(plot)})"]
    return "\n".join(lines) + "\n"


def pareto(points):
    """Indices of points not dominated (lower x, higher y is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2, y2) != (x, y) for x2, y2 in points):
            front.append(i)
    return front


def plots(summary, run_dir):
    """accuracy_vs_latency.png and accuracy_vs_size.png; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in summary["records"] if r["artifact"] != "keras"]
    written = []
    batch = min((int(k[6:]) for r in records for k in (r.get("latency") or {})), default=None)
    axes = [("size_bytes", 1e-6, "size (MB)", "accuracy_vs_size.png")]
    if batch is not None:
        axes.insert(0, (None, 1, f"median latency, batch {batch} (ms)",
                        "accuracy_vs_latency.png"))
    for key, scale, label, name in axes:
        pts, labels = [], []
        for r in records:
            x = _latency(r, batch)["median_ms"] if key is None and _latency(r, batch) else \
                (r.get(key) or 0) * scale if key else None
            if x:
                pts.append((x, r["metrics"]["accuracy"]))
                labels.append(f"{r['stage']}/{r['artifact']}")
        if not pts:
            continue
        front = set(pareto(pts))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, ((x, y), text) in enumerate(zip(pts, labels)):
            ax.scatter([x], [y], color="tab:red" if i in front else "tab:blue")
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        fx = sorted((pts[i] for i in front))
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "r--", lw=1, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{summary['recipe']}: accuracy vs {label.split(' (')[0]}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = os.path.join(run_dir, name)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written
