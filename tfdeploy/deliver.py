"""After the last stage: write each artifact, run it in its own runtime, gate it, benchmark.

Artifacts are handled one at a time (write, then evaluate), so when an exporter or an
evaluator fails the ones finished before it are on disk and in ``records``; the failure
becomes one :class:`ArtifactError` naming the artifact and the cause.
"""
import json
import os

from tfdeploy import bench, evaluate, export, objectives, progress
from tfdeploy.errors import TfdeployError
from tfdeploy.export.job import ExportJob


class ArtifactError(TfdeployError):
    """An exporter, evaluator or benchmark failed (a missing package, a converter error)."""

    exit_code = 4


def guarded(what, fn, *args):
    """``fn(*args)``; any exception becomes an ArtifactError naming ``what``."""
    try:
        return fn(*args)
    except TfdeployError:
        raise
    except Exception as e:  # noqa: BLE001  (converters raise anything; name it, no traceback)
        lines = str(e).strip().splitlines()
        cause = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
        hint = " (a package is missing: `pip install -e .` installs every declared one)" \
            if isinstance(e, ImportError) else ""
        raise ArtifactError(f"{what}: {cause}{hint}") from e


def deliver(recipe, context, model, traits, stage_name, records, folder=None):
    """Export, evaluate and gate every format of ``recipe.export.formats`` (into
    ``folder``, default ``<run>/artifacts``), appending a record per artifact to
    ``records``; benchmark them. Returns (artifacts, gate problems)."""
    if not recipe.export.formats:
        return [], []
    reference = context.predict(model)  # every worker takes part in the distributed predict
    if not context.is_chief:
        return [], []  # artifacts are the chief's
    keras_records = [r for r in records if r["artifact"] == "keras"]
    baseline = objectives.value(keras_records[0]) if keras_records else None
    job = ExportJob(recipe, context, model, traits, folder)
    gates = Gates(recipe, traits, baseline, selection_baseline(keras_records))
    artifacts, problems = [], []
    skipped = export.not_made(recipe.export.formats, traits)
    for name, why in skipped.items():  # check_formats let it through for other stages
        print(f"export {name}: not made after stage {stage_name}: {why}", flush=True)
    if skipped and keras_records:
        keras_records[-1]["not_made"] = skipped  # the stage's own record: the report says why
    for name in [n for n in recipe.export.formats if n not in skipped]:
        made, problem = deliver_one(name, job, context, stage_name, reference, gates, records)
        artifacts += made
        if problem:
            problems.append(problem)
    if recipe.benchmark.enabled:
        guarded("benchmark", benchmark, recipe, context, artifacts, records)
    return artifacts, problems


def deliver_one(name, job, context, stage_name, reference, gates, records):
    """Write, evaluate and gate format ``name``, searching for a mixed precision that passes
    when the recipe asks; append its record(s). Returns (artifacts, gate problem or None)."""
    fmt, mode = export.get(name), job.recipe.evaluate.search

    def searchable():  # asked only when needed: listing layers converts the model
        return bool(fmt.precisions) and mode != "off" and bool(fmt.layers(job))

    if mode == "always" and searchable():
        return searched(fmt, job, context, stage_name, reference, gates, records, "always")
    progress.say(f"export {name}: writing")
    with progress.heartbeat(f"export {name}"):
        artifact = guarded(f"export {name}", job.write, name)
    rec = evaluate_one(artifact, context, stage_name, reference, job.traits)
    records.append(rec)
    problem = gates.check(rec, artifact)
    if problem and gates.selection is not None and searchable():
        print(f"  {problem}\n  searching for the layers {name} must keep at higher precision",
              flush=True)
        records.pop()
        return searched(fmt, job, context, stage_name, reference, gates, records, problem)
    retry = guarded(f"export {name}'s fallback", fmt.gate_fallback, job) if problem else None
    if retry is not None:
        rec["gate"] = problem
        print(f"  {problem}\n  {name} missed its gate: trying {retry.name}", flush=True)
        rec = evaluate_one(retry, context, stage_name, reference, job.traits)
        records.append(rec)
        problem = gates.check(rec, retry)
        rec["gate"] = problem or "passed"
        return [artifact, retry], problem
    rec["gate"] = problem or "passed"
    return [artifact], problem


def searched(fmt, job, context, stage_name, reference, gates, records, trigger):
    """Run the accuracy search for ``fmt`` (see tfdeploy.search), write the chosen mix as
    the artifact, evaluate and gate it; its record carries the search and the mix."""
    from tfdeploy import search
    from tfdeploy.rundir import atomic_write_text

    path = job.path(fmt.name)
    with progress.heartbeat(f"search {fmt.name}"):
        outcome = guarded(f"search {fmt.name}",
                          search.Search(fmt, job, context, gates.selection).run, path)
    artifact = export.Artifact(fmt.name, path)
    recipe_path = os.path.splitext(path)[0] + ".recipe.json"
    atomic_write_text(recipe_path, json.dumps(fmt.mixed_recipe(job, outcome.kept), indent=1))
    rec = evaluate_one(artifact, context, stage_name, reference, job.traits)
    objective = context.task.objective
    rec["search"] = dict(outcome.summary(objective), trigger=trigger, recipe=recipe_path)
    records.append(rec)
    problem = gates.check(rec, artifact)
    if problem:
        problem = f"{problem}; {outcome.describe(objective)}"
    rec["gate"] = problem or "passed"
    return [artifact], problem


def selection_baseline(keras_records):
    """The first stage's Keras metric on the selection split: what a search's steps are
    gated against (the validation split chooses nothing)."""
    if not keras_records or "selection" not in keras_records[0]:
        return None
    first = keras_records[0]  # a cached stage's record may predate the "metric" key
    return first["selection"]["metrics"][objectives.of(first).name]


class Gates:
    def __init__(self, recipe, traits, baseline, selection):
        self.recipe, self.traits = recipe, traits
        self.baseline, self.selection = baseline, selection

    def check(self, rec, artifact):
        return gate(rec, artifact, self.recipe, self.baseline, self.traits)


def evaluate_one(artifact, context, stage_name, reference, traits):
    rec = guarded(f"evaluate {artifact.name} ({artifact.path})", evaluate.evaluate_artifact,
                  artifact, context, stage_name, reference, context.recipe.evaluate.threads)
    with progress.heartbeat(f"evaluate {artifact.name}: weight sparsity"):
        sparsity = artifact.weight_sparsity()
    if sparsity is not None:
        rec["weights_sparsity"] = round(sparsity, 6)
    print(f"export {artifact.name}: {artifact.path} ({rec['size_bytes'] / 1e6:.1f} MB, "
          f"{rec['metric']} {objectives.value(rec):.4f}{agreement(rec)}, "
          f"max diff {rec['max_abs_diff']:.1e})", flush=True)
    return rec


def agreement(rec):
    return f", agreement {rec['agreement']:.4f}" if "agreement" in rec else ""


def gate(rec, artifact, recipe, baseline, traits):
    """A problem message, or None: float parity for float artifacts, then the accuracy gate.
    A QAT model's float artifacts are not held to float parity: each runtime places the
    fake-quant rounding its own way (measured: up to 0.09 logit on a small CNN)."""
    ev = recipe.evaluate
    exact = artifact.is_float and not traits.quantization_aware
    problem = evaluate.check_float_parity(rec, ev.float_tolerance) if exact else None
    return problem or evaluate.check_gate(rec, baseline, ev.max_drop, ev.relative)


def benchmark(recipe, context, artifacts, records):
    """Time every artifact side by side; add ``latency`` to their records."""
    b = recipe.benchmark
    settings = bench.Settings(tuple(b.batch_sizes), b.seq_length, b.threads, b.warmup_runs,
                              b.warmup_seconds, b.runs, b.seconds, b.block, b.settle)
    make_inputs = context.plugin.synthetic_inputs
    if b.lengths == "validation":
        shares = context.validation.length_shares()
        print(f"benchmark: {len(artifacts)} artifact(s), batch sizes {b.batch_sizes}, the "
              f"validation split's lengths ("
              f"{', '.join(f'{n} tokens {share:.1%}' for n, share in shares.items())}), "
              f"{b.threads} threads", flush=True)
        by_length, latency = bench.over_lengths(artifacts, settings, shares,
                                                make_inputs=make_inputs)
        lengths = {"length_shares": {str(n): share for n, share in shares.items()}}
        for rec in records[-len(artifacts):]:
            rec["latency_by_length"] = {str(n): by_length[n][rec["artifact"]]
                                        for n in by_length}
    else:  # seq_length means nothing to a model with fixed-shape inputs
        lengths = {"seq_length": b.seq_length} if context.plugin.sequence_input else {}
        print(f"benchmark: {len(artifacts)} artifact(s), batch sizes {b.batch_sizes}, "
              + "".join(f"seq {n}, " for n in lengths.values())
              + f"{b.threads} threads", flush=True)
        latency = bench.benchmark(artifacts, settings, make_inputs=make_inputs)
    for rec in records[-len(artifacts):]:
        rec["latency"] = latency[rec["artifact"]]
        rec["latency_settings"] = {**lengths, "threads": b.threads}
