"""Keras 3 model files: which Keras wrote a file, loading one without running its code, and
writing one back.

The Keras version is read from the file itself (``metadata.json`` in a ``.keras`` archive,
the ``keras_version`` attribute of an ``.h5`` file), never guessed from its suffix alone.
"""
import atexit
import json
import os
import shutil
import tempfile
import zipfile

from tfdeploy.errors import CheckpointError
from tfdeploy.rundir import atomic_write_bytes


def keras_version(path, where):
    """The major Keras version that wrote ``path`` (a ``.keras`` or ``.h5`` file)."""
    if path.endswith(".keras"):
        try:
            with zipfile.ZipFile(path) as archive:
                metadata = json.loads(archive.read("metadata.json"))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{where}: not a readable .keras archive ({e})") from None
        except KeyError:
            raise CheckpointError(f"{where}: a .keras archive without metadata.json") from None
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{where}: the archive's metadata.json is not JSON") from None
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    else:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                version = f.attrs.get("keras_version")
        except OSError as e:
            raise CheckpointError(f"{where}: not a readable HDF5 file ({e})") from None
        version = version.decode() if isinstance(version, bytes) else version
    return int(str(version).split(".")[0]) if str(version)[:1].isdigit() else 2


def load(path, where, custom_objects, unsafe):
    """The Keras 3 model in ``path``; stored code never runs unless ``unsafe``."""
    import keras

    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False,
                                       safe_mode=not unsafe)
    except Exception as e:  # Keras 3 raises bare Exceptions for a file it cannot rebuild
        if isinstance(e, (KeyboardInterrupt, MemoryError)):
            raise
        raise CheckpointError(f"{where}: Keras 3 cannot load the model: {first_line(e)}"
                              f"{hint(e)}") from None


def first_line(error):
    """The error's first line, without the whole config Keras appends to some messages."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    for marker in (" Full object config", " using config=", " config={"):
        line = line.split(marker)[0]
    return line[:300].rstrip(" :.,")


def hint(error):
    text = str(error)
    if "safe_mode" in text or "Lambda" in text:
        return " (a Lambda layer's code runs only with model.unsafe: true, for a file you " \
               "trust)"
    if "Unknown" in text or "Could not locate" in text or "custom" in text:
        return " (custom layers: list their classes in model.custom_objects)"
    return ""


def save(model, path):
    """Write ``model`` (Keras 3) to ``path`` whole or not at all."""
    folder = tempfile.mkdtemp(prefix=".tmp-keras3-", dir=os.path.dirname(path) or ".")
    try:
        staged = os.path.join(folder, "model.keras")
        model.save(staged)
        with open(staged, "rb") as f:
            atomic_write_bytes(path, f.read())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def exported(model):
    """``model`` exported to a SavedModel in a folder that lives as long as this process:
    the post-training path of a Keras 3 model that no stage can train."""
    folder = tempfile.mkdtemp(prefix="tfdeploy-keras3-")
    atexit.register(shutil.rmtree, folder, True)
    model.export(os.path.join(folder, "saved_model"), verbose=False)
    return os.path.join(folder, "saved_model")
