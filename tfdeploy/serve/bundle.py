"""What a published version carries for ``tfdeploy.serve`` beyond the SavedModel.

TF Serving reads only the SavedModel of ``<name>/<version>/`` and ignores
``assets.extra/`` apart from its warm-up file, so the other artifacts of the run (TFLite,
ONNX) and a manifest live in ``assets.extra/tfdeploy/``: ``serving.json`` names every
artifact with its runtime and measured accuracy, drop and latency (how ``--artifact=auto``
picks one), the labels, the signature's inputs, and for text models how the server turns
a sentence into the model's inputs (the tokenizer's files sit beside it).
"""
import json
import os
import shutil

from tfdeploy import files, objectives

FOLDER = os.path.join("assets.extra", "tfdeploy")
MANIFEST = "serving.json"


def manifest(recipe, plugin, label_names, records, baseline):
    """The manifest's dict and {file name in the bundle: source path}."""
    files, artifacts = {}, {}
    for rec in records:
        name = rec["artifact"]
        if name == "keras" or not rec.get("path") or not os.path.exists(rec["path"]):
            continue
        metric = objectives.of(rec).name
        entry = {"runtime": rec["runtime"], "metric": metric, metric: objectives.value(rec),
                 "agreement": rec.get("agreement"), "size_bytes": rec.get("size_bytes")}
        if baseline is not None:
            entry["drop"] = round(objectives.drop(rec, baseline), 6)
        latency = rec.get("latency", {}).get("batch_1", {}).get("median_ms")
        if latency is not None:
            entry["latency_ms_batch_1"] = latency
        if name != "savedmodel":  # the SavedModel is the version folder itself
            entry["file"] = os.path.basename(rec["path"])
            files[entry["file"]] = rec["path"]
        artifacts[name] = entry
    text = plugin.serving_text()
    if text:
        for key, path in text.pop("files").items():
            files[os.path.basename(path)] = path
            text[key] = os.path.basename(path)
        text["max_length"], text["buckets"] = recipe.data.max_length, list(
            recipe.data.buckets or [])
    objective = next((objectives.of(r).name for r in records), "accuracy")
    return {"schema_version": 1, "model": recipe.name, "labels": list(label_names),
            "objective": objective, "artifacts": artifacts, "text": text}, files


def write(version_dir, data, files):
    """Put the manifest and its files into a (staging) version folder."""
    folder = os.path.join(version_dir, FOLDER)
    os.makedirs(folder, exist_ok=True)
    for name, source in files.items():
        shutil.copy2(source, os.path.join(folder, name))
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def read(version_dir):
    """The manifest of a version folder, or a minimal one for a plain SavedModel (any
    TF Serving model: served by TF only)."""
    path = os.path.join(version_dir, FOLDER, MANIFEST)
    if not os.path.exists(path):
        return {"schema_version": 1, "labels": None, "artifacts": {"savedmodel": {
            "runtime": "tf"}}, "text": None}
    data = files.read_json_object(path, "serving manifest", ValueError)
    if not isinstance(data.get("artifacts"), dict):
        raise ValueError(f"{path}: not a tfdeploy serving manifest")
    return data


def artifact_path(version_dir, data, name):
    if name == "savedmodel":
        return version_dir
    return os.path.join(version_dir, FOLDER, data["artifacts"][name]["file"])


def choose(data, wanted):
    """The artifact to serve: ``wanted`` by name, or for ``auto`` the fastest measured one
    (batch 1 latency) among those that passed the run's gates; else the SavedModel."""
    artifacts = data["artifacts"]
    if wanted != "auto":
        if wanted not in artifacts:
            raise ValueError(f"artifact {wanted!r} is not in this version (it has: "
                             f"{', '.join(sorted(artifacts))})")
        return wanted
    timed = [(a["latency_ms_batch_1"], n) for n, a in artifacts.items()
             if a.get("latency_ms_batch_1") is not None]
    return min(timed)[1] if timed else "savedmodel" if "savedmodel" in artifacts else \
        sorted(artifacts)[0]
