"""Run a recipe from Python, on the recipe's own model or on a Keras model object.

    import keras, tfdeploy.api
    model = keras.Model(...)            # a Keras 3 (or tf-keras) model, trained
    summary = tfdeploy.api.run("recipe.yaml", model=model, output_dir="runs")

Bad input raises :class:`tfdeploy.errors.TfdeployError` with the message the CLI prints.
"""
import os
import shutil
import tempfile

import tfdeploy  # noqa: F401  (pins tf-keras for TFMOT before TensorFlow loads)


def run(recipe_path, model=None, overrides=(), **options):
    """Run ``recipe_path`` as ``python -m tfdeploy.run`` does and return its summary (what
    ``metrics.json`` holds). ``model``: a Keras model object that replaces the recipe's
    model section: it is saved as a ``.keras`` file and read back as ``type: keras`` (a
    Keras 3 model goes through the Keras 3 bridge; ``model.inputs`` and
    ``model.custom_objects`` of a ``type: keras`` recipe still apply). ``options``: the
    CLI's (``output_dir``, ``strategy``, ``only``, ``start_from``, ``resume``,
    ``dry_run``)."""
    from tfdeploy import pipeline
    from tfdeploy.recipe.load import load_tree
    from tfdeploy.recipe.schema import Recipe
    from tfdeploy.recipe.validate import validate

    folder = tempfile.mkdtemp(prefix="tfdeploy-model-") if model is not None else None
    try:
        tree, locations = load_tree(recipe_path, list(overrides))
        if model is not None:
            tree["model"] = model_section(tree.get("model"), saved(model, folder))
        recipe = validate(Recipe, tree, locations)
        import tf_keras as keras

        keras.utils.set_random_seed(recipe.seed)
        return pipeline.run(recipe, pipeline.Options(**options))
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def saved(model, folder):
    path = os.path.join(folder, f"{model.name or 'model'}.keras")
    model.save(path)
    return path


def model_section(section, path):
    """A ``type: keras`` section for the file at ``path``, keeping what a keras section of
    the recipe said about inputs and custom classes."""
    kept = {k: v for k, v in (section or {}).items() if k in ("inputs", "custom_objects")} \
        if isinstance(section, dict) and section.get("type") == "keras" else {}
    return {"type": "keras", "path": path, **kept}
