"""One export of one model: what its formats share, each written once, in the run directory.

Artifacts land in ``<run dir>/artifacts/`` (the SavedModel in ``artifacts/savedmodel/``);
publishing the SavedModel to TF Serving's ``<export.dir>/<name>/<version>/`` happens only
after every artifact has passed its gates (``tfdeploy.publish``).
"""
import os

from tfdeploy import export, objectives, progress
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
        """The SavedModel the converters read: ``serving_default`` takes the model's own
        inputs and answers ``logits`` (the model's outputs). For a classifier whose
        clients send what the model reads, it is also the published one."""
        from tfdeploy.export import savedmodel

        plugin = self.context.plugin
        path = self.path("savedmodel") if self.serves_as_converted() else \
            os.path.join(self.folder, ".convert", "savedmodel")
        return self.once("savedmodel", lambda: savedmodel.write(
            self.model, plugin.input_specs(), self.context.task.label_names, path,
            objective=self.converted_objective()))

    def serving_savedmodel(self):
        """The published SavedModel: the task objective's outputs, and raw features in
        ``serving_default`` when the model plugin looks them up in the graph."""
        from tfdeploy.export import savedmodel

        if self.serves_as_converted():
            return self.savedmodel()
        plugin = self.context.plugin
        return self.once("serving_savedmodel", lambda: savedmodel.write(
            self.model, plugin.input_specs(), self.context.task.label_names,
            self.path("savedmodel"), self.raw_features(), self.context.task.objective,
            plugin.serving_features()))

    def raw_features(self):
        return self.once("raw_features", self.context.plugin.raw_features)

    def serves_as_converted(self):
        """Whether the SavedModel the converters read is also the published one."""
        return self.raw_features() is None and \
            self.context.task.objective is objectives.CLASSIFICATION

    def converted_objective(self):
        """The outputs of a SavedModel made for the converters: a classifier's own (it is
        also published), else None: ``logits`` only."""
        return objectives.CLASSIFICATION if self.serves_as_converted() else None

    def onnx_fp32(self):
        """The float ONNX file, with the model plugin's rewrites."""
        from tfdeploy.export import onnx

        plugin = self.context.plugin
        return self.once("onnx_fp32", lambda: onnx.write_fp32(
            self.model, plugin.input_specs(), self.path("onnx_fp32"), self.recipe.export.opset,
            plugin.onnx_rewrite))

    def tflite_fp32(self):
        """The float TFLite file: the ``tflite_fp32`` artifact when the recipe lists it, else
        a file for the converters in ``.convert/``."""
        from tfdeploy.export import tflite

        path = self.path("tflite_fp32") if "tflite_fp32" in self.recipe.export.formats else \
            os.path.join(self.folder, ".convert", "float.tflite")
        return self.once("tflite_fp32", lambda: tflite.export(self.savedmodel(), "tflite_fp32",
                                                              path))

    def tflite_lookups(self):
        """Bytes of the float TFLite file with embedding GATHERs as EMBEDDING_LOOKUPs: what
        the LiteRT Quantizer formats quantize."""
        from tfdeploy.export.tflite_rewrites import gathers_as_lookups

        def make():
            with open(self.tflite_fp32(), "rb") as f:
                return gathers_as_lookups(f.read())

        return self.once("tflite_lookups", make)

    def representative(self):
        """Calibration rows from the training split (a generator factory for TFLite)."""
        count = min(self.recipe.export.calibration_examples, len(self.context.train))
        rows = self.context.train.representative(count, self.recipe.seed)
        return progress.counted_generator("calibrate", rows, count)
