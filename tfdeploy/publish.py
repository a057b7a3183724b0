"""Publish an evaluated SavedModel to TF Serving's layout, ``<root>/<name>/<version>/``.

Only a model that passed every gate gets here. It is copied beside the version folders
under a temporary name, then renamed into place while holding an exclusive ``fcntl`` lock
on ``<root>/<name>/.lock``: a TF Serving watching the folder never sees a partial or an
unevaluated version, and two runs publishing at once get two versions. Temporary copies
left by killed runs (their pid is gone) are removed under the same lock.
"""
import contextlib
import fcntl
import os
import shutil
import uuid

from tfdeploy.errors import TfdeployError


@contextlib.contextmanager
def locked(folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish(saved_model_dir, root, name, version=0, add=None):
    """Copy ``saved_model_dir`` in as a new version; return the version's path. ``add``
    (a function of the staging folder) puts more files in before it appears."""
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    staging = os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex}")
    try:
        shutil.copytree(saved_model_dir, staging)
        if add:
            add(staging)
        readable(staging)
        with locked(folder):
            remove_stale(folder)
            number = version or next_version(folder)
            target = os.path.join(folder, str(number))
            if os.path.exists(target):
                raise TfdeployError(f"export.version {number}: {target} already exists; a "
                                    f"published version is never replaced (0 = the next one)")
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def next_version(folder):
    """One above the highest numeric version directory in ``folder`` (TF Serving layout)."""
    if not os.path.isdir(folder):
        return 1
    versions = [int(d) for d in os.listdir(folder) if d.isdigit()]
    return max(versions, default=0) + 1


def remove_stale(folder):
    """Delete ``.tmp-<pid>-*`` entries whose process is gone (a killed export or publish)."""
    for entry in os.listdir(folder):
        parts = entry.split("-")
        if not entry.startswith(".tmp-") or len(parts) < 3 or not parts[1].isdigit():
            continue
        if not pid_alive(int(parts[1])):
            path = os.path.join(folder, entry)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else \
                os.unlink(path)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def readable(path):
    """0755 folders, 0644 files: TF Serving may run as another user."""
    os.chmod(path, 0o755)
    for parent, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(parent, d), 0o755)
        for f in files:
            os.chmod(os.path.join(parent, f), 0o644)


def publish_run(run_dir, root=None, version=0):
    """Publish a finished run's artifacts (its SavedModel and, for tfdeploy.serve, the
    others with their measured numbers) as a new version, e.g. a run made before serving
    existed. Returns the version's path."""
    import json

    from tfdeploy import models, objectives
    from tfdeploy.recipe.load import load_tree
    from tfdeploy.recipe.schema import Recipe
    from tfdeploy.recipe.validate import validate
    from tfdeploy.serve import bundle, config as serve_config

    metrics_path = os.path.join(run_dir, "metrics.json")
    if not os.path.exists(metrics_path):
        raise TfdeployError(f"{run_dir}: no metrics.json; only a finished run is published")
    recipe = validate(Recipe, *load_tree(os.path.join(run_dir, "recipe.yaml"), []))
    with open(metrics_path, encoding="utf-8") as f:
        records = json.load(f)["records"]
    folder = os.path.join(run_dir, "artifacts")
    for rec in records:  # paths as the run saw them; the files are in its artifacts/
        if rec.get("path"):
            rec["path"] = os.path.join(folder, os.path.basename(rec["path"].rstrip("/")))
    with open(os.path.join(folder, "savedmodel", "assets", "labels.txt"), encoding="utf-8") as f:
        labels = [line.strip() for line in f if line.strip()]
    plugin = models.create(recipe.model, len(labels))
    keras_records = [r for r in records if r["artifact"] == "keras"]
    baseline = objectives.value(keras_records[0]) if keras_records else None
    manifest, files = bundle.manifest(recipe, plugin, labels, records, baseline)
    root = root or recipe.export.dir
    target = publish(os.path.join(folder, "savedmodel"), root, recipe.name, version,
                     add=lambda staging: bundle.write(staging, manifest, files))
    serve_config.write_all(root, recipe)
    return target


if __name__ == "__main__":
    import sys

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)

    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m tfdeploy.publish RUN_DIR [EXPORT_DIR]")
    try:
        print(publish_run(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else None))
    except TfdeployError as e:
        sys.exit(f"error: {e}")
