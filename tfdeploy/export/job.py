"""One export of one model: what its formats share, each written once, in the run directory.

Artifacts land in ``<run dir>/artifacts/`` (the SavedModel in ``artifacts/savedmodel/``);
publishing the SavedModel to TF Serving's ``<export.dir>/<name>/<version>/`` happens only
after every artifact has passed its gates (``tfdeploy.publish``).
"""
import os

from tfdeploy import export, progress
from tfdeploy.traits import Traits


class ExportJob:
    def __init__(self, recipe, context, model, traits=Traits(), folder=None):
        self.recipe, self.context, self.model, self.traits = recipe, context, model, traits
        self.folder = folder or os.path.join(context.run_dir, "artifacts")
        self._done = {}

    def path(self, name):
        """Where format ``name`` is written."""
        fmt = export.get(name)
        if not fmt.suffix:
            return os.path.join(self.folder, name)
        return os.path.join(self.folder, f"{self.recipe.name}.{name}{fmt.suffix}")

    def write(self, name):
        """Write format ``name``; return its Artifact."""
        return export.Artifact(name, export.get(name).write(self, self.path(name)))

    def once(self, key, make):
        if key not in self._done:
            self._done[key] = make()
        return self._done[key]

    def savedmodel(self):
        """The SavedModel (``serving_default`` with named inputs, labels as an asset)."""
        from tfdeploy.export import savedmodel

        plugin = self.context.plugin
        return self.once("savedmodel", lambda: savedmodel.write(
            self.model, plugin.input_specs(), self.context.task.label_names,
            self.path("savedmodel"), plugin.raw_features()))

    def onnx_fp32(self):
        """The float ONNX file, with the model plugin's rewrites."""
        from tfdeploy.export import onnx

        plugin = self.context.plugin
        return self.once("onnx_fp32", lambda: onnx.write_fp32(
            self.model, plugin.input_specs(), self.path("onnx_fp32"), self.recipe.export.opset,
            plugin.onnx_rewrite))

    def representative(self):
        """Calibration rows from the training split (a generator factory for TFLite)."""
        count = min(self.recipe.export.calibration_examples, len(self.context.train))
        rows = self.context.train.representative(count, self.recipe.seed)
        return progress.counted_generator("calibrate", rows, count)
