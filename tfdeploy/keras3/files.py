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

from tfdeploy import checkpoint
from tfdeploy.errors import CheckpointError
from tfdeploy.rundir import atomic_write_bytes


def keras_version(path, where):
    """The major Keras version that wrote ``path`` (a ``.keras`` or ``.h5`` file)."""
    if path.endswith(".keras"):
        metadata = archive_json(path, "metadata.json", where)
        version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    else:
        version = checkpoint.h5_attribute(path, "keras_version", where)
    return int(str(version).split(".")[0]) if str(version)[:1].isdigit() else 2


def archive_json(path, member, where):
    """The JSON file ``member`` of the ``.keras`` archive ``path``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(member))
    except KeyError:
        raise CheckpointError(f"{where}: a .keras archive without {member}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{where}: not a readable .keras archive ({e})") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{where}: the archive's {member} is not JSON") from None


def load(path, where, custom_objects, unsafe):
    """The Keras 3 model in ``path``; stored code never runs unless ``unsafe``."""
    import keras

    if path.endswith(".keras"):
        check_classes(stored_layers(path, where), where, custom_objects, unsafe)
    try:
        return keras.saving.load_model(path, custom_objects=custom_objects, compile=False,
                                       safe_mode=not unsafe)
    except Exception as e:  # Keras 3 raises bare Exceptions for a file it cannot rebuild
        raise CheckpointError(f"{where}: Keras 3 cannot load the model: {first_line(e)}"
                              f"{hint(e)}") from None


def stored_layers(path, where):
    """[(name, class name, module, registered name)] of every layer the archive's
    config.json describes, nested ones included; read as JSON, nothing built."""
    config = archive_json(path, "config.json", where)
    found, stack = [], [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node and isinstance(node.get("config"), dict) and \
                    "inbound_nodes" in node:
                found.append((node.get("name") or node["config"].get("name"),
                              node["class_name"], node.get("module") or "",
                              node.get("registered_name")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def check_classes(layers, where, custom_objects, unsafe):
    """Refuse, by layer name, what Keras 3 could not load safely: a Lambda (unless
    ``unsafe``) or a custom class that ``custom_objects`` does not provide."""
    for name, class_name, module, registered in layers:
        if class_name == "Lambda" and not unsafe:
            raise CheckpointError(f"{where}: layer {name!r} (Lambda) holds Python code, "
                                  f"which runs only with model.unsafe: true (for a file you "
                                  f"trust)")
        custom = registered or not module.startswith("keras")
        if custom and class_name not in custom_objects and \
                (registered or "").split(">")[-1] not in custom_objects:
            origin = f"registered as {registered}" if registered else f"module {module}"
            raise CheckpointError(f"{where}: layer {name!r} ({class_name}, {origin}) is a "
                                  f"custom class; list it in model.custom_objects to load "
                                  f"the model")


def first_line(error):
    """The error's first line, without the whole config Keras appends to some messages."""
    lines = [l.strip() for l in str(error).splitlines() if l.strip()]
    line = lines[0] if lines else type(error).__name__
    if "could not be loaded" in line and len(lines) > 1:  # the reason is on the next line
        line = f"its stored weights do not fit its config: {lines[1]}"
    for marker in (" Full object config", " using config=", " config={", " Target variable"):
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
