"""Run a recipe: strategy -> data -> model -> stages (cached, resumable) -> export -> report.

Each stage's output is keyed by a hash of its config and its input's hash. With
``--resume`` a finished stage whose hash is unchanged is loaded instead of rerun; the
first changed or unfinished stage and everything after it run again.
"""
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time

import yaml

from tfdeploy import (cache, checkpoint, evaluate, models, objectives, progress, publish,
                      report, stages, strategy as strategies)
# Imported now, not when a long run reaches them: an edit to the tree while a run trains
# must not hand it a newer module half way.
from tfdeploy import bench, deliver, export  # noqa: F401
from tfdeploy.export import onnx as _onnx, savedmodel as _savedmodel, tflite as _tflite  # noqa
from tfdeploy.serve import bundle, config as serve_config
from tfdeploy.traits import Traits
from tfdeploy import data as data_plugins
from tfdeploy.context import Context
from tfdeploy.data.pipeline import encode_split
from tfdeploy.errors import GateError, RecipeError, StageError, TfdeployError
from tfdeploy.recipe.schema import to_dict
from tfdeploy.keras3 import handoff
from tfdeploy.stages.teacher import check_teachers
from tfdeploy.cache import STAGE_DONE, find_cached, is_finished
from tfdeploy.rundir import (atomic_write_json, atomic_write_text, environment,
                             remove_temp_files,
                             new_run_id, recipe_runs)



HANDOFF_ROWS = 64  # validation rows a stage's Keras 3 copy is checked on


@dataclasses.dataclass
class Options:
    output_dir: str = ""
    strategy: str = ""
    only: tuple = ()          # --stages: run just these stages (in recipe order)
    start_from: str = ""      # --from: reuse cached outputs before this stage
    resume: bool = False
    dry_run: bool = False


def select_stages(recipe, opts):
    names = [s.name for s in recipe.stages]
    for name in list(opts.only) + ([opts.start_from] if opts.start_from else []):
        if name not in names:
            raise TfdeployError(f"no stage named {name!r} in the recipe (stages: "
                                f"{', '.join(names) or 'none'})")
    chosen = [s for s in recipe.stages if not opts.only or s.name in opts.only]
    return chosen


def prepare(recipe, opts):
    """Everything that can fail on bad input, before anything is written."""
    chosen = select_stages(recipe, opts)
    stage_list = [(s, stages.create(s)) for s in chosen]
    if (opts.strategy or recipe.distribution.strategy) == "parameter_server":
        stages.check_parameter_server(stage_list)  # before waiting for the cluster
    strategy, info = strategies.create(recipe.distribution, opts.strategy or None)
    source = data_plugins.create(recipe.data, recipe.seed)
    models.check_data(recipe.model, recipe.data.type, source.gives)
    task = source.load()
    data_files = source.files()
    plugin = models.create(recipe.model, task.num_labels)
    plugin.adapt(task)
    augment = source.augmentation()
    train = encode_split(plugin, task.train, recipe.data, augment)
    validation = encode_split(plugin, task.validation.take(recipe.evaluate.max_examples),
                              recipe.data)
    selection = encode_split(plugin, task.selection, recipe.data) if task.selection else None
    context = Context(recipe, strategy, info, plugin, task, train, validation, selection,
                      run_dir="",
                      is_chief=strategies.is_chief(strategy), data_files=data_files,
                      encode_train=lambda split: encode_split(plugin, split, recipe.data,
                                                              augment))
    plugin.check_trainable([s.name for s in chosen])
    check_benchmark(recipe, plugin)
    stages.check_strategy(stage_list, info)
    check_teachers(stage_list)
    for cfg, stage in stage_list:
        stage.check(context)
    check_output_paths(recipe, opts)
    return context, stage_list


def check_benchmark(recipe, plugin):
    b = recipe.benchmark
    if b.enabled and b.lengths == "validation" and not plugin.sequence_input:
        raise RecipeError([("benchmark.lengths", f"validation times the padded lengths of "
                            f"token sequences; model type {recipe.model.type} takes "
                            f"fixed-shape inputs (use fixed)", None)])


def preflight(context, stage_list):
    with context.strategy.scope():
        model = context.plugin.build()
    task = context.task
    held = len(context.selection) if context.selection else 0
    print(f"data: {len(task.train) + held} train / {len(context.validation)} validation "
          f"examples, labels {task.label_names}")
    print(f"  {held} of the train rows held out as the selection split (chooses "
          f"checkpoints); the validation split is only reported")
    print(f"model: {model.name}, {model.count_params():,} parameters, "
          f"{len(model.layers)} layers")
    print(f"strategy: {context.strategy_info['strategy']} "
          f"({context.strategy_info['replicas']} replica(s))")
    context.traits = Traits()
    for cfg, stage in stage_list:
        print(f"stage {cfg.name} ({cfg.type}):")
        for layer, action in stage.preflight(model, context):
            print(f"  {layer:40s} {action}")
        for layer, why in stage.wrap_problems(model, context):
            print(f"  {layer:40s} cannot wrap: {why}")
        context.traits = stage.planned_traits(context.traits)
    stages.check_wrappable(stage_list, model, context)
    export.check_formats(context.recipe.export.formats,
                         planned_exports(context.recipe, stage_list))
    for name in context.recipe.export.formats:
        for line in export.get(name).dry_run(model, context.recipe):
            print(line if line.startswith(" ") else f"export {line}")
    return model


def planned_exports(recipe, stage_list):
    """[(stage name, planned traits)] of the stages whose models are exported: the last
    one, and with ``benchmark.stages: all`` every one."""
    traits, planned = Traits(), []
    for cfg, stage in stage_list:
        traits = stage.planned_traits(traits)
        planned.append((cfg.name, traits))
    if not planned:
        return [("input", traits)]
    return planned if recipe.benchmark.stages == "all" else planned[-1:]


def choose_run_dir(recipe, opts):
    """The latest run when resuming an unfinished one; else a new run directory. A finished
    run (it has metrics.json) is never written again: resuming it starts a new run that
    reuses its finished stages through the cache."""
    root = opts.output_dir or recipe.output.dir
    runs = recipe_runs(root, recipe.name)
    if opts.resume and runs and not os.path.exists(os.path.join(runs[-1], "metrics.json")):
        return runs[-1], runs
    return os.path.join(root, recipe.name, new_run_id()), runs


def check_output_paths(recipe, opts):
    """Refuse, before any work, output folders that are files or cannot be made."""
    for what, path in (("--output_dir" if opts.output_dir else "output.dir",
                        opts.output_dir or recipe.output.dir), ("export.dir", recipe.export.dir)):
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe.rstrip(os.sep))
        if probe and not os.path.isdir(probe):
            raise TfdeployError(f"{what} {path}: {probe} is a file, not a folder")
        if probe and not os.access(probe, os.W_OK | os.X_OK):
            raise TfdeployError(f"{what} {path}: {probe} is not writable")


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
    scopes, context.traits = [], Traits()
    for index, (cfg, stage) in enumerate(stage_list):
        digest = keys[index]
        reached_start = reached_start or cfg.name == opts.start_from
        context.stage_dir = os.path.join(context.run_dir, f"{index}-{cfg.name}")
        context.backup_dir = backup_dir(recipe, opts, context, digest)
        scopes.extend(stage.load_scopes())
        cached = find_stage_output(recipe, opts, context, cfg, digest, reached_start)
        loaded = load_stage_output(cached, cfg, context, scopes) if cached else None
        if loaded is not None:
            print(f"stage {cfg.name}: unchanged, using {cached}", flush=True)
            model = loaded
            with open(os.path.join(cached, "eval.json")) as f:
                records.append(json.load(f))
            context.traits = Traits.from_dict(cache.stage_traits(cached))
            if context.is_chief and cached != context.stage_dir:
                atomic_write_json(context.path("cached.json"), {  # relative: the tree may move
                    "from": os.path.relpath(cached, context.stage_dir), "hash": digest})
        else:
            result = run_stage(stage, cfg, model, context, digest)
            model, context.traits = result.model, result.traits
            with progress.heartbeat(f"stage {cfg.name}: evaluating"):
                records.append(finish_stage(result, stage, cfg, context, digest))
        if cfg.name in teachers:
            context.stage_outputs[cfg.name] = model
        if recipe.benchmark.stages == "all" and index < len(stage_list) - 1:
            deliver_intermediate(recipe, context, model, cfg.name, records)
    if not stage_list:
        rec, _ = evaluate.evaluate_keras(model, context, "input")
        records.append(rec)
    return model, context.traits


def deliver_intermediate(recipe, context, model, stage_name, records):
    """An earlier stage's artifacts (benchmark.stages: all), in ``artifacts/<stage>/``:
    exported, evaluated and timed for the report; their gates are recorded, not enforced
    (only the last stage's artifacts are gated and published)."""
    folder = os.path.join(context.run_dir, "artifacts", stage_name)
    _, problems = deliver.deliver(recipe, context, model, context.traits, stage_name, records,
                                  folder)
    for problem in problems:
        print(f"  (not gated, an earlier stage) {problem}", flush=True)


def load_stage_output(folder, cfg, context, scopes):
    """The model of a finished stage output, or None when its file does not load back: the
    stage then runs again. TFMOT saves a cluster-preserving QAT layer's quantizer as the
    plain one, which builds fewer weights than the file holds ("Weight count mismatch")."""
    try:
        return checkpoint.load(folder, strategies.for_loading(context.strategy),
                               context.plugin.custom_objects(), scopes=scopes)
    except ValueError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"stage {cfg.name}: the finished output in {folder} does not load ({reason}); "
              f"running the stage again", flush=True)
        return None


def find_stage_output(recipe, opts, context, cfg, digest, reached_start):
    """The directory of a finished output to reuse for this stage, or None to run it."""
    if opts.resume and is_finished(context.stage_dir, digest):
        return context.stage_dir
    if not opts.resume and reached_start:
        return None
    cached = find_cached(digest, opts.output_dir or recipe.output.dir)
    if cached is None and not reached_start:
        raise TfdeployError(f"--from {opts.start_from}: stage {cfg.name!r} has no finished "
                            f"output with the same config in earlier runs; run it first")
    return cached


def finish_stage(result, stage, cfg, context, digest):
    """Evaluate a stage's new model; the chief records it, writes its Keras 3 copy and
    marks the stage done."""
    rec, _ = evaluate.evaluate_keras(result.model, context, cfg.name)
    if result.report:
        rec["stage_report"] = result.report
    rec["traits"] = result.traits.to_dict()
    if context.is_chief and "keras3" in context.plugin.capabilities:
        _, inputs = next(context.validation.numpy_batches(HANDOFF_ROWS))
        plain = stage.plain_model(result.model)
        keras3_copy = handoff.write(plain, context.plugin, context.stage_dir, inputs)
        if keras3_copy:
            rec["keras3"] = dict(keras3_copy, float_weights=plain is not result.model)
    print(f"stage {cfg.name}: validation {rec['metric']} {objectives.value(rec):.4f}",
          flush=True)
    if context.is_chief:
        atomic_write_json(context.path("eval.json"), rec)
        cache.mark_done(context.stage_dir, digest, {
            "name": cfg.name, "type": cfg.type, "config": to_dict(cfg),
            "traits": result.traits.to_dict(),
            "seconds": round(time.time() - context.stage_started, 1)})
    return rec


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


def backup_dir(recipe, opts, context, digest):
    """Where BackupAndRestore keeps a running stage's state: keyed by the stage's hash and
    the replica count, not by run directory, so that every worker of a multi-worker run
    (which shares the output directory but not the chief's run id) and a restarted worker
    read the same backup. One run per stage config at a time per output directory."""
    root = opts.output_dir or recipe.output.dir
    return os.path.join(root, ".backups", f"{recipe.name}-{digest[:16]}-r{context.replicas}")


def run_stage(stage, cfg, model, context, digest):
    stage_dir = context.stage_dir
    started = os.path.join(stage_dir, "started.json")
    if os.path.exists(started):
        with open(started) as f:
            previous = json.load(f).get("hash")
        if previous != digest:
            if os.path.exists(os.path.join(stage_dir, STAGE_DONE)):
                # A finished output of another config stays a cache entry, never deleted.
                os.replace(stage_dir, f"{stage_dir}.{previous}")
            else:
                shutil.rmtree(stage_dir)  # unfinished, another config: not ours
    os.makedirs(stage_dir, exist_ok=True)
    atomic_write_json(started, {"hash": digest})
    print(f"stage {cfg.name} ({cfg.type}): running", flush=True)
    context.stage_started = time.time()
    try:
        with backup_lock(context):
            result = stage.run(model, context)
    except (ValueError, TypeError) as e:
        # TFMOT/Keras reject unsupported layers with ValueError; name the stage.
        if isinstance(e, TfdeployError):
            raise
        raise StageError(f"stage {cfg.name} ({cfg.type}): {e}") from e
    if strategies.is_parameter_server(context.strategy):
        # the shards, gathered into one plain model for saving, evaluation and export
        sharded = strategies.placement(result.model)
        result.model = strategies.gathered(result.model, context.plugin)
        result.report = {**(result.report or {}), "sharded_variables": sharded}
    if context.is_chief:
        with progress.heartbeat(f"stage {cfg.name}: saving"):
            checkpoint.save(result.model, stage_dir)
    # Every worker's fit, and so the chief's last backup write, ends before any worker
    # removes the shared backup (CI saw a worker that finished first delete the folder
    # under the chief's SaveV2).
    strategies.barrier(context.strategy)
    shutil.rmtree(context.backup_dir, ignore_errors=True)  # finished: nothing to resume
    if not context.is_chief:  # leave nothing: also .backups/ and the output dir, if empty
        remove_empty_dirs(os.path.dirname(context.backup_dir), levels=2)
    return result


@contextlib.contextmanager
def backup_lock(context):
    """The chief holds an exclusive lock on the stage's backup folder while it trains: two
    runs of the same stage config in one output directory would share (and corrupt) one
    backup. The workers of one multi-worker run share it on purpose and take no lock."""
    if not context.is_chief:
        yield
        return
    os.makedirs(os.path.dirname(context.backup_dir), exist_ok=True)
    with open(context.backup_dir + ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TfdeployError(f"another run is training this stage now (its backup "
                                f"{context.backup_dir} is locked); wait for it, or use "
                                f"another --output_dir") from None
        try:
            yield
            os.unlink(handle.name)  # finished: the backup goes too, leave nothing
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_empty_dirs(path, levels):
    for _ in range(levels):
        try:
            os.rmdir(path)
        except OSError:  # not empty (or gone): stop
            return
        path = os.path.dirname(path)
