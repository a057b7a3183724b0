"""The stage cache: which finished stage output may stand in for running a stage again.

A stage's key covers everything that changes its output: its config and every earlier
stage's key, the model and data configs, the seed, the bytes of the data files and of the
checkpoint (sha256, memoised by path, size and mtime), a teacher file's bytes, the replica
count (the global batch), the selection split (it follows from the data config, the seed
and the data bytes) and the versions of tfdeploy, TensorFlow, tf-keras and TFMOT. A finished
stage's ``stage.json`` records its key and the sha256 of each file a later run trusts
(``model.h5``, ``eval.json``); a stage whose files no longer match is not reused.
"""
import glob
import hashlib
import importlib.metadata as md
import json
import os

import tfdeploy
from tfdeploy import checkpoint
from tfdeploy.errors import CheckpointError
from tfdeploy.recipe.schema import to_dict
from tfdeploy.rundir import atomic_write_json, fingerprint

STAGE_DONE = "stage.json"
TRUSTED_FILES = ("model.h5", "eval.json")
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path):
    """sha256 of ``path``'s bytes, hashed once per (path, size, mtime) and remembered in
    the tfdeploy cache (size and mtime alone would miss an edit that keeps both)."""
    from tfdeploy.wheels import cache_dir

    stat = os.stat(path)
    key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = os.path.join(cache_dir(), "digests.json")
    try:
        with open(memo_path, encoding="utf-8") as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict) or not isinstance(memo.get(key), str):
        memo = memo if isinstance(memo, dict) else {}
        memo[key] = sha256(path)
        try:
            atomic_write_json(memo_path, memo)
        except OSError:
            pass  # a read-only cache only costs hashing again
    return memo[key]


def versions():
    found = {"tfdeploy": tfdeploy.__version__}
    for name in PACKAGES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def run_inputs(recipe, context, source_files, model_files):
    """What every stage of this run depends on, before its own config."""
    return {"model": to_dict(recipe.model), "data": to_dict(recipe.data), "seed": recipe.seed,
            "data_files": {p: file_digest(p) for p in source_files},
            "model_files": {p: file_digest(p) for p in model_files},
            "replicas": context.replicas, "versions": versions()}


def stage_key(upstream, cfg, stage):
    """The key of one stage: its config and teacher file on top of ``upstream``."""
    revision = [stage.revision] if stage.revision else []  # keys made before it stay valid
    return fingerprint(upstream, to_dict(cfg), teacher_digest(stage.teacher_spec()), *revision)


def stage_keys(recipe, context, stage_list):
    """The key of each stage of ``stage_list``, in order."""
    key = run_inputs(recipe, context, context.data_files, context.plugin.files())
    keys = []
    for cfg, stage in stage_list:
        key = stage_key(key, cfg, stage)
        keys.append(key)
    return keys


def teacher_digest(spec):
    """The bytes of a teacher given as a saved model; None for 'previous' or a stage name
    (those are covered by the upstream keys)."""
    if not spec or spec == "previous":
        return None
    directory = spec if os.path.isdir(spec) else os.path.dirname(spec)
    path = os.path.join(directory, TRUSTED_FILES[0])
    return file_digest(path) if os.path.exists(path) else None


def mark_done(stage_dir, key, info):
    """Write stage.json last: the key, the digests of the files it vouches for, ``info``."""
    digests = {name: sha256(os.path.join(stage_dir, name)) for name in TRUSTED_FILES}
    atomic_write_json(os.path.join(stage_dir, STAGE_DONE),
                      {"hash": key, "files": digests, **info})


def is_finished(stage_dir, key):
    """A finished output with this key whose trusted files still match their digests."""
    try:
        with open(os.path.join(stage_dir, STAGE_DONE), encoding="utf-8") as f:
            done = json.load(f)
        if not isinstance(done, dict) or done.get("hash") != key:
            return False
        files = done.get("files") or {}
        if not all(files.get(name) == sha256(os.path.join(stage_dir, name))
                   for name in TRUSTED_FILES):
            return False
        # tfdeploy never saves a Lambda layer: one here was put by someone else
        return not checkpoint.holds_code(os.path.join(stage_dir, TRUSTED_FILES[0]))
    except (OSError, ValueError, CheckpointError):
        return False


def find_cached(key, root):
    """A finished stage output with this key in any run under ``root`` (newest first)."""
    found = []
    for done in glob.glob(os.path.join(root, "*", "*", "*", STAGE_DONE)):
        stage_dir = os.path.dirname(done)
        if is_finished(stage_dir, key):
            found.append((os.path.getmtime(done), stage_dir))
    return max(found)[1] if found else None


def stage_traits(stage_dir):
    with open(os.path.join(stage_dir, STAGE_DONE), encoding="utf-8") as f:
        return json.load(f).get("traits")
