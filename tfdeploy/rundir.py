"""The run directory and atomic writes.

Every file a later step (or ``--resume``) trusts is written to a temporary name and renamed
into place, so a killed run never leaves a half-written artifact behind.
"""
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import tempfile


def atomic_write_bytes(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, data):
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory that replaces ``path`` only if the block succeeds."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    try:
        yield tmp
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_temp_files(root):
    """Delete what killed atomic writes left under ``root`` (``.tmp-*`` files and
    folders: never renamed into place, so nothing trusts them)."""
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if d.startswith(".tmp-")]:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            dirs.remove(name)
        for name in files:
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def fingerprint(*parts):
    """Stable hash of JSON-able parts (configs, upstream hashes)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_run_id():
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]


def recipe_runs(output_dir, name):
    """Existing run directories of a recipe, oldest first."""
    root = os.path.join(output_dir, name)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root))
            if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]


def environment(strategy_info):
    """env.json: versions, CPU flags, devices and the chosen strategy."""
    import importlib.metadata as md

    import tensorflow as tf

    versions = {}
    for pkg in ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx",
                "onnxruntime", "ai-edge-litert", "numpy", "tokenizers", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    flags = []
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    wanted = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma",
                              "sse4_2", "amx_int8", "amx_bf16")
                    flags = sorted(set(line.split(":", 1)[1].split()) & set(wanted))
                    break
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpu_flags": flags, "packages": versions,
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "distribution": strategy_info}
