"""The run's report: ``report.md`` and ``report.html`` (one self-contained file, PNGs
inlined), summary first, then what each stage did, then every artifact.

The summary recommends an artifact for each goal among those that passed the run's gates:
the fastest (batch-1 median latency, or the smallest batch measured) and the smallest
(bytes). Per stage: accuracy (reported and selection split), what it did to the model
(sparsity with its pattern, clusters, QAT scheme, distillation) and its per-layer
sparsity. Per artifact: accuracy, drop, agreement, bytes, gzip bytes, weight sparsity and
latency at each batch size with its ratio to the SavedModel.
"""
import os

from tfdeploy import objectives
from tfdeploy.report import html, plots
from tfdeploy.report.records import artifacts, batch_sizes, fmt, latency, recommend
from tfdeploy.rundir import atomic_write_text


def write(summary, run_dir):
    """Write report.md, report.html and the PNGs; returns the report.md path."""
    pngs = plots.all_plots(summary, run_dir)
    atomic_write_text(os.path.join(run_dir, "report.md"), markdown(summary, pngs))
    atomic_write_text(os.path.join(run_dir, "report.html"), html.page(
        summary["recipe"], markdown(summary, pngs), pngs, run_dir))
    return os.path.join(run_dir, "report.md")


def markdown(summary, pngs=()):
    def images(paths):
        return [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in paths]

    per_stage = [p for p in pngs if os.path.basename(p).startswith(("sparsity_", "train_"))]
    lines = [f"# {summary['recipe']}", ""] + summary_section(summary) + [""]
    lines += stage_section(summary) + [""] + images(per_stage) + [""]
    lines += artifact_section(summary) + [""] + search_section(summary)
    lines += images([p for p in pngs if p not in per_stage])
    return "\n".join(lines) + "\n"


def metric_title(metric):
    return "Accuracy" if metric == "accuracy" else metric.upper()


def summary_section(summary):
    keras = [r for r in summary["records"] if r["artifact"] == "keras"]
    baseline = objectives.value(keras[0]) if keras else None
    metric = objectives.of(keras[0]).name if keras else "accuracy"
    failed = [r for r in artifacts(summary) if r.get("gate", "passed") != "passed"]
    lines = ["## Summary", "",
             f"{len(keras)} stage(s), {len(artifacts(summary))} artifact(s), "
             f"{summary['seconds']:.0f} s, strategy {summary['strategy']['strategy']} "
             f"({summary['strategy']['replicas']} replica(s)). {metric_title(metric)} is on "
             f"the validation "
             f"split, which chose nothing" + (f"; baseline (first stage) {baseline:.4f}."
                                              if baseline is not None else ".")]
    for goal, rec in recommend(summary).items():
        drop = "" if baseline is None else f" (drop {objectives.drop(rec, baseline):+.4f})"
        size = rec.get("size_bytes")
        lat = "".join(f", b{b} {latency(rec, b):.2f} ms" for b in batch_sizes([rec]))
        lines.append(f"- **Recommended, {goal}:** `{rec['artifact']}` of stage "
                     f"{rec['stage']} ({rec['runtime']}): {metric} {objectives.value(rec):.4f}{drop}, "
                     f"{fmt(size and size / 1e6, '.1f')} MB{lat}.")
    for rec in failed:
        lines.append(f"- **Failed its gate:** `{rec['artifact']}` — {rec['gate']}")
    published = [r.get("published") for r in summary["records"] if r.get("published")]
    if published:
        lines.append(f"- Published for serving: `{published[0]}`.")
    return lines + model_lines(summary.get("model") or {})


def model_lines(model):
    """Where the model came from, when that needs saying (a Keras 3 file)."""
    if model.get("source") != "Keras 3":
        return []
    if not model.get("rebuilt"):
        return [f"- Model: a Keras 3 file on the post-training path: {model.get('why')}"]
    return [f"- Model: a Keras 3 file, rebuilt in tf-keras; its outputs match the Keras 3 "
            f"model's to {model['max_difference']:.1e} on {model['rows']} training rows."]


def keras3_lines(keras_records):
    """Each stage's Keras 3 copy, or why it has none."""
    lines = []
    for rec in keras_records:
        copy = rec.get("keras3")
        if copy and copy.get("path"):
            weights = " (float weights, fake quantization left out)" \
                if copy.get("float_weights") else ""
            which = "float " if copy.get("float_weights") else ""
            lines.append(f"- {rec['stage']}: `{copy['path']}`{weights}; its outputs match "
                         f"the stage's {which}tf-keras model to {copy['max_difference']:.1e} on "
                         f"{copy['rows']} validation rows")
        elif copy:
            lines.append(f"- {rec['stage']}: none ({copy['skipped']})")
    return ["", "Keras 3 files (each loads in plain Keras 3):", ""] + lines if lines else []


def stage_section(summary):
    keras = [r for r in summary["records"] if r["artifact"] == "keras"]
    metric = objectives.of(keras[0]).name if keras else "accuracy"
    lines = ["## Stages", "", f"| stage | {metric} | selection {metric} | sparsity | clusters | "
             "QAT scheme | distilled |", "|---|---|---|---|---|---|---|"]
    for rec in keras:
        t = rec.get("traits") or {}
        chosen = (rec.get("selection") or {}).get("metrics", {}).get(metric)
        seen = " (trained on: refit)" if (rec.get("selection") or {}).get("trained_on") else ""
        pattern = f" ({t['sparsity_pattern']})" if t.get("sparsity_pattern") else ""
        lines.append(f"| {rec['stage']} | {objectives.value(rec):.4f} | "
                     f"{fmt(chosen, '.4f')}{seen} | "
                     f"{fmt(t.get('sparsity') or None, '.1%')}{pattern if t.get('sparsity') else ''}"
                     f" | {t.get('clusters') or ''} | {t.get('quantization_aware') or ''} | "
                     f"{'yes' if t.get('distilled') else ''} |")
    return lines + keras3_lines(keras)


def artifact_section(summary):
    records = artifacts(summary)
    keras = [r for r in summary["records"] if r["artifact"] == "keras"]
    baseline = objectives.value(keras[0]) if keras else None
    metric = objectives.of(keras[0]).name if keras else "accuracy"
    batches = batch_sizes(records)
    header = ["stage", "artifact", "runtime", metric, "drop", "agreement", "max diff",
              "MB", "gzip MB", "weight sparsity", "gate"]
    for b in batches:
        header += [f"b{b} median/p90 ms", f"b{b} ratio"]
    lines = ["## Artifacts", "", "Drop: against the fp32 baseline (first stage). Agreement and "
             "max diff: against the Keras model of the same stage. Latency ratio: median over "
             "the TF SavedModel's of the same stage (over its first artifact's when it made "
             "no SavedModel)." + timed_at(records), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        size, gz = r.get("size_bytes"), r.get("gzip_bytes")
        row = [r["stage"], r["artifact"], r["runtime"], f"{objectives.value(r):.4f}",
               fmt(objectives.drop(r, baseline), "+.4f"),
               fmt(r.get("agreement"), ".4f"), fmt(r.get("max_abs_diff"), ".1e"),
               fmt(size and size / 1e6, ".1f"), fmt(gz and gz / 1e6, ".1f"),
               fmt(r.get("weights_sparsity"), ".1%"),
               "passed" if r.get("gate", "passed") == "passed" else "FAILED"]
        for b in batches:
            lat = (r.get("latency") or {}).get(f"batch_{b}")
            row += [f"{lat['median_ms']:.2f} / {lat['p90_ms']:.2f}" if lat else "",
                    fmt(lat and lat.get("ratio"), ".2f")]
        lines.append("| " + " | ".join(row) + " |")
    return lines + not_made_lines(keras)


def timed_at(records):
    """What the latency columns were measured at, in words."""
    settings = next((r["latency_settings"] for r in records if r.get("latency_settings")),
                    None)
    if not settings:
        return ""
    threads = settings.get("threads")
    if "length_shares" in settings:
        mix = ", ".join(f"{n} tokens {share:.0%}" for n, share in
                        settings["length_shares"].items())
        return (f" Latency, {threads} threads: each padded length of the validation split "
                f"timed, weighted by its share of the rows ({mix}).")
    if settings.get("seq_length"):
        return f" Latency: {settings['seq_length']} tokens a row, {threads} threads."
    return f" Latency: {threads} threads."


def not_made_lines(keras_records):
    """Formats the recipe lists that a stage's model cannot make, and why."""
    lines = [f"- `{name}` after stage {r['stage']}: {why}"
             for r in keras_records for name, why in (r.get("not_made") or {}).items()]
    return ["", "Not made:", ""] + lines if lines else []


def search_section(summary):
    """One table per accuracy search (tfdeploy.search): its steps on the selection split."""
    lines = []
    for r in summary["records"]:
        search = r.get("search")
        if not search:
            continue
        metric = search["selection_metric"]
        lines += [f"## Accuracy search: {r['artifact']} ({r['stage']})", "",
                  f"Why: {search['trigger']}. Stopped: {search['stopped']}. "
                  f"{search['evaluations']} evaluations, {search['seconds']:.0f} s. "
                  f"Kept above {search['precision']}: {len(search['kept'])} layer(s); "
                  f"recipe: `{search['recipe']}`.", "",
                  f"| step | layer moved up | to | selection {metric} | agreement | MB | kept |",
                  "|---|---|---|---|---|---|---|"]
        for i, step in enumerate(search["curve"]):
            lines.append(f"| {i} | {step['added'] or '(none)'} | {step['precision'] or ''} | "
                         f"{step[metric]:.4f} | {fmt(step.get('agreement'), '.4f')} | "
                         f"{step['size_bytes'] / 1e6:.2f} | "
                         f"{'yes' if step['accepted'] else 'undone'} |")
        lines.append("")
    return lines
