"""Run a recipe: strategy -> data -> model -> stages (cached, resumable) -> export -> report.

Each stage's output is keyed by a hash of its config and its input's hash. With
``--resume`` a finished stage whose hash is unchanged is loaded instead of rerun; the
first changed or unfinished stage and everything after it run again.
"""
import dataclasses
import json
import os
import shutil
import tempfile
import time

import yaml

from tfdeploy import (cache, deliver, evaluate, export, objectives, progress, publish, report,
                      stages, strategy as strategies)
from tfdeploy.errors import GateError
from tfdeploy.prepare import Options, planned_exports, preflight, prepare  # noqa: F401
from tfdeploy.recipe.schema import to_dict
from tfdeploy.rundir import (atomic_write_json, atomic_write_text, environment, new_run_id,
                             recipe_runs, remove_temp_files)
from tfdeploy.serve import bundle, config as serve_config
from tfdeploy.stage_runs import (backup_dir, find_stage_output, finish_stage,
                                 load_stage_output, run_stage)
from tfdeploy.traits import Traits


def choose_run_dir(recipe, opts):
    """The latest run when resuming an unfinished one; else a new run directory. A finished
    run (it has metrics.json) is never written again: resuming it starts a new run that
    reuses its finished stages through the cache."""
    root = opts.output_dir or recipe.output.dir
    runs = recipe_runs(root, recipe.name)
    if opts.resume and runs and not os.path.exists(os.path.join(runs[-1], "metrics.json")):
        return runs[-1], runs
    return os.path.join(root, recipe.name, new_run_id()), runs


def run(recipe, opts):
    context, stage_list = prepare(recipe, opts)
    if opts.dry_run:
        print(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        preflight(context, stage_list)
        print("dry run: nothing trained or written")
        return None
    with context.strategy.scope():
        model = context.plugin.build()
    stages.check_wrappable(stage_list, model, context)  # before anything is written
    export.check_formats(recipe.export.formats, planned_exports(recipe, stage_list))
    run_dir, _ = choose_run_dir(recipe, opts)
    if not context.is_chief:  # workers train in step with the chief but keep nothing
        run_dir = tempfile.mkdtemp(prefix="tfdeploy-worker-")
    context.run_dir = run_dir
    try:
        summary = _run(recipe, opts, context, stage_list, model)
        strategies.barrier(context.strategy)
        return summary
    finally:
        if not context.is_chief:
            shutil.rmtree(run_dir, ignore_errors=True)


def _run(recipe, opts, context, stage_list, model):
    run_dir = context.run_dir
    os.makedirs(run_dir, exist_ok=True)
    remove_temp_files(run_dir)  # what a killed run was writing when it died
    print(f"run directory: {run_dir}", flush=True)
    if not os.path.exists(os.path.join(run_dir, "recipe.yaml")):  # a resumed run keeps its own
        atomic_write_text(os.path.join(run_dir, "recipe.yaml"),
                          yaml.safe_dump(to_dict(recipe), sort_keys=False))
        atomic_write_json(os.path.join(run_dir, "env.json"),
                          environment(context.strategy_info))
    records, started = [], time.time()
    model, traits = run_stages(recipe, opts, context, stage_list, model, records)
    stage_name = stage_list[-1][0].name if stage_list else "input"
    failure, problems, published = None, [], None
    try:
        artifacts, problems = deliver.deliver(recipe, context, model, traits, stage_name,
                                              records)
    except deliver.ArtifactError as e:
        failure = e
    else:
        published = publish_if_passed(recipe, context, artifacts, problems, records)
    summary = {"schema_version": 1, "recipe": recipe.name, "run_dir": run_dir,
               "seconds": round(time.time() - started, 1),
               "strategy": context.strategy_info, "model": context.plugin.describe(),
               "records": records}
    if context.is_chief:
        write_report(summary, run_dir)
        if recipe.output.tensorboard:
            from tfdeploy.report import tensorboard

            tensorboard.write(summary, to_dict(recipe), run_dir)
        if published:
            print(f"published: {published}", flush=True)
    if failure:
        raise failure
    if problems:
        raise GateError("\n".join(problems))
    return summary


def run_stages(recipe, opts, context, stage_list, model, records):
    """Run (or load from the cache) each stage in turn from the starting ``model``; the
    last model and its traits."""
    keys = cache.stage_keys(recipe, context, stage_list)
    # Stage models later stages name as their teacher; only those stay in memory.
    teachers = {stage.teacher_spec() for _, stage in stage_list}
    reached_start = not opts.start_from
    scopes, traits = [], Traits()
    for index, (cfg, stage) in enumerate(stage_list):
        digest = keys[index]
        reached_start = reached_start or cfg.name == opts.start_from
        # this stage's own view: its folder, backup and the traits of the model entering it
        here = dataclasses.replace(
            context, stage_name=cfg.name, traits=traits,
            stage_dir=os.path.join(context.run_dir, f"{index}-{cfg.name}"),
            backup_dir=backup_dir(recipe, opts, context, digest))
        scopes.extend(stage.load_scopes())
        cached = find_stage_output(recipe, opts, here, cfg, digest, reached_start)
        loaded = load_stage_output(cached, cfg, here, scopes) if cached else None
        if loaded is not None:
            print(f"stage {cfg.name}: unchanged, using {cached}", flush=True)
            model = loaded
            with open(os.path.join(cached, "eval.json")) as f:
                records.append(json.load(f))
            traits = Traits.from_dict(cache.stage_traits(cached))
            if here.is_chief and cached != here.stage_dir:
                atomic_write_json(here.path("cached.json"), {  # relative: the tree may move
                    "from": os.path.relpath(cached, here.stage_dir), "hash": digest})
        else:
            result, seconds = run_stage(stage, cfg, model, here, digest)
            model, traits = result.model, result.traits
            with progress.heartbeat(f"stage {cfg.name}: evaluating"):
                records.append(finish_stage(result, stage, cfg, here, digest, seconds))
        if cfg.name in teachers:
            context.stage_outputs[cfg.name] = model
        if recipe.benchmark.stages == "all" and index < len(stage_list) - 1:
            deliver_intermediate(recipe, context, model, traits, cfg.name, records)
    if not stage_list:
        rec, _ = evaluate.evaluate_keras(model, context, "input")
        records.append(rec)
    return model, traits


def deliver_intermediate(recipe, context, model, traits, stage_name, records):
    """An earlier stage's artifacts (benchmark.stages: all), in ``artifacts/<stage>/``:
    exported, evaluated and timed for the report; their gates are recorded, not enforced
    (only the last stage's artifacts are gated and published)."""
    folder = os.path.join(context.run_dir, "artifacts", stage_name)
    _, problems = deliver.deliver(recipe, context, model, traits, stage_name, records, folder)
    for problem in problems:
        print(f"  (not gated, an earlier stage) {problem}", flush=True)


def publish_if_passed(recipe, context, artifacts, problems, records):
    """Publish the SavedModel for TF Serving once every artifact passed its gates; drop it
    when it was only the converters' input. Returns the published path or None."""
    saved = next((a for a in artifacts if a.name == "savedmodel"), None)
    if not context.is_chief:
        return None
    if saved is None:
        shutil.rmtree(os.path.join(context.run_dir, "artifacts", "savedmodel"),
                      ignore_errors=True)
        return None
    if problems:
        return None
    keras_records = [r for r in records if r["artifact"] == "keras"]
    baseline = objectives.value(keras_records[0]) if keras_records else None
    paths = {a.path for a in artifacts}  # the last stage's, not earlier stages' (stages: all)
    manifest, files = bundle.manifest(recipe, context.plugin, context.task.label_names,
                                      [r for r in records if r.get("path") in paths], baseline)
    target = publish.publish(saved.path, recipe.export.dir, recipe.name, recipe.export.version,
                             add=lambda staging: bundle.write(staging, manifest, files))
    serve_config.write_all(recipe.export.dir, recipe)
    for rec in records:
        if rec["artifact"] == "savedmodel" and rec.get("path") == saved.path:
            rec["published"] = target
    return target


def write_report(summary, run_dir):
    """metrics.json (artifact paths relative to the run directory) and the report."""
    for rec in summary["records"]:
        for key in ("path", "published"):
            if rec.get(key):
                rec[key] = os.path.relpath(rec[key], run_dir)
        if rec.get("search"):  # the searched mix's recipe JSON, beside the artifact
            rec["search"]["recipe"] = os.path.relpath(rec["search"]["recipe"], run_dir)
    atomic_write_json(os.path.join(run_dir, "metrics.json"), summary)
    print(f"report: {report.write(summary, run_dir)} (and report.html)")
