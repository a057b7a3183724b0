"""report.md: one table of stage x artifact with metric, drop, agreement, size, timing."""


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def markdown(summary):
    records = summary["records"]
    baseline = records[0]["metrics"]["accuracy"] if records else None
    lines = [f"# {summary['recipe']}", "",
             f"Run directory `{summary['run_dir']}`, {summary['seconds']} s, strategy "
             f"{summary['strategy']['strategy']} ({summary['strategy']['replicas']} replica(s)).",
             "", "Drop is against the first row. Agreement and max diff compare an artifact "
             "with the Keras model of the same stage.", "",
             "| stage | artifact | runtime | accuracy | drop | agreement | max diff | size | "
             "eval s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        acc = r["metrics"]["accuracy"]
        drop = None if baseline is None else baseline - acc
        size = r.get("size_bytes")
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["stage"], r["artifact"], r["runtime"], _fmt(acc, ".4f"), _fmt(drop, "+.4f"),
            _fmt(r.get("agreement"), ".4f"), _fmt(r.get("max_abs_diff"), ".1e"),
            "" if size is None else f"{size / 1e6:.1f} MB", _fmt(r.get("eval_seconds"), ".1f")))
    return "\n".join(lines) + "\n"
