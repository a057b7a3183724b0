"""One stage of a run: found finished in the cache, or run with its backup locked, saved,
evaluated and marked done."""
import contextlib
import fcntl
import json
import os
import shutil
import time

from tfdeploy import cache, checkpoint, evaluate, objectives, progress, strategy as strategies
from tfdeploy.cache import STAGE_DONE, find_cached, is_finished
from tfdeploy.errors import StageError, TfdeployError
from tfdeploy.keras3 import handoff
from tfdeploy.recipe.schema import to_dict
from tfdeploy.rundir import atomic_write_json

HANDOFF_ROWS = 64  # validation rows a stage's Keras 3 copy is checked on


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


def finish_stage(result, stage, cfg, context, digest, seconds):
    """Evaluate a stage's new model; the chief records it, writes its Keras 3 copy and
    marks the stage done."""
    rec, _ = evaluate.evaluate_keras(result.model, context, cfg.name, result.traits)
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
            "seconds": round(seconds, 1)})
    return rec


def backup_dir(recipe, opts, context, digest):
    """Where BackupAndRestore keeps a running stage's state: keyed by the stage's hash and
    the replica count, not by run directory, so that every worker of a multi-worker run
    (which shares the output directory but not the chief's run id) and a restarted worker
    read the same backup. One run per stage config at a time per output directory."""
    root = opts.output_dir or recipe.output.dir
    return os.path.join(root, ".backups", f"{recipe.name}-{digest[:16]}-r{context.replicas}")


def run_stage(stage, cfg, model, context, digest):
    """Run ``stage`` on ``model`` in its folder, its backup locked; the chief saves its
    model. Returns (StageResult, seconds it took)."""
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
    started_at = time.time()
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
    return result, time.time() - started_at


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
