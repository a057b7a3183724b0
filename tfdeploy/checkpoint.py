"""Save and load a stage's model (Keras H5: it round-trips QAT and custom layers, unlike
``.keras`` for QAT models).

Legacy H5 loading has no safe mode: a ``Lambda`` layer's stored bytecode would run. So
before loading, the file's model config is read as text and a Lambda is refused; no stage
of tfdeploy makes one.
"""
import contextlib
import os
import re

import tf_keras as keras

from tfdeploy.errors import CheckpointError
from tfdeploy.rundir import atomic_write_text

MODEL_FILE = "model.h5"


def save(model, directory):
    path = os.path.join(directory, MODEL_FILE)
    tmp = os.path.join(directory, ".tmp-" + MODEL_FILE)
    model.save(tmp, save_format="h5", include_optimizer=False)
    os.replace(tmp, path)
    atomic_write_text(os.path.join(directory, "model.json"), model.to_json())
    return path


def load(directory, strategy, custom_objects=None, scopes=()):
    """The stage's model; ``custom_objects`` from the model plugin, ``scopes`` from the
    stages whose wrappers it may hold (QAT)."""
    path = os.path.join(directory, MODEL_FILE)
    refuse_stored_code(path, path)
    with strategy.scope(), contextlib.ExitStack() as stack:
        # wrappers deserialize their inner layers by name, outside load_model's own scope
        stack.enter_context(keras.utils.custom_object_scope(custom_objects or {}))
        for scope in scopes:
            stack.enter_context(scope())
        return keras.models.load_model(os.path.join(directory, MODEL_FILE),
                                       custom_objects=custom_objects or {}, compile=False)


def stored_classes(path):
    """Class names of every layer a .h5 file or Keras SavedModel describes, read as text
    without building anything."""
    if os.path.isdir(path):
        with open(os.path.join(path, "keras_metadata.pb"), "rb") as f:
            text = f.read().decode("utf-8", "replace")
    else:
        text = h5_attribute(path, "model_config", path)
        if text is None:
            raise CheckpointError(f"{path}: an HDF5 file without a model config (weights "
                                  f"only?)")
        text = text.decode() if isinstance(text, bytes) else text
    return set(re.findall(r'"class_name"\s*:\s*"([^"]+)"', text))


def h5_attribute(path, name, where):
    """The text of attribute ``name`` of an HDF5 file (None when it has none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(name)
    except OSError as e:
        raise CheckpointError(f"{where}: not a readable HDF5 file ({e})") from None
    return value.decode() if isinstance(value, bytes) else value


def holds_code(path):
    return "Lambda" in stored_classes(path)


def refuse_stored_code(path, where):
    if holds_code(path):
        raise CheckpointError(f"{where}: the model has a Lambda layer, whose stored Python "
                              f"code would run on loading; rewrite it as a layer class "
                              f"(custom_objects) or set model.unsafe: true if you trust the "
                              f"file")
