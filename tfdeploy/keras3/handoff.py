"""A stage's model handed back to Keras 3: ``model.keras`` beside the stage's ``model.h5``,
loaded back by Keras 3 and checked against the tf-keras model it came from."""
import os

from tfdeploy.errors import CheckpointError
from tfdeploy.keras3 import files
from tfdeploy.keras3.convert import max_difference

FILE = "model.keras"


def write(model, plugin, folder, inputs):
    """Write ``model`` (tf-keras) as a Keras 3 file in ``folder``; a dict for the stage's
    record: the file, relative to the run directory, and its largest output difference on
    ``inputs``; or why there is none (a layer the bridge cannot rebuild)."""
    try:
        converted = plugin.keras3_model(model)
    except CheckpointError as e:
        print(f"  no Keras 3 file: {e}", flush=True)
        return {"skipped": str(e)}
    path = files.save(converted, os.path.join(folder, FILE))
    reloaded = files.load(path, path, {}, unsafe=False)
    difference = max_difference(model, reloaded, inputs)
    print(f"  Keras 3 file {path}: outputs match the tf-keras model to {difference:.1e}",
          flush=True)
    return {"path": os.path.join(os.path.basename(folder), FILE),
            "max_difference": difference, "rows": len(next(iter(inputs.values())))}
