"""Exporters: each artifact format is written atomically and run in its own runtime.

``export_artifacts`` writes what the recipe's ``export.formats`` asks for: the SavedModel in
TF Serving layout (``<export.dir>/<name>/<version>/``) and the TFLite / ONNX files beside the
run (``<run dir>/artifacts/``). Every artifact comes back with a runner for evaluation and
benchmarks.
"""
import dataclasses
import os

FLOAT_FORMATS = ("savedmodel", "tflite_fp32", "onnx_fp32")
FORMATS = ("savedmodel", "tflite_fp32", "tflite_fp16", "tflite_dynamic_int8", "tflite_int8",
           "onnx_fp32", "onnx_int8")


@dataclasses.dataclass
class Artifact:
    name: str
    path: str

    @property
    def runtime(self):
        if os.path.isdir(self.path):
            return "tf"
        return "onnxruntime" if self.path.endswith(".onnx") else "litert"

    @property
    def is_float(self):
        return self.name in FLOAT_FORMATS

    def runner(self, threads=2):
        """Callable: dict of numpy int32 inputs -> numpy logits."""
        return runner_for(self.path, threads)

    def size(self):
        return dir_size(self.path) if os.path.isdir(self.path) else os.path.getsize(self.path)


def runner_for(path, threads=2):
    """Pick the runtime from the artifact itself: SavedModel dir, .tflite or .onnx."""
    if os.path.isdir(path):
        from tfdeploy.export import savedmodel
        return savedmodel.runner(path)
    if path.endswith(".tflite"):
        from tfdeploy.export import tflite
        return tflite.runner(path, threads)
    if path.endswith(".onnx"):
        from tfdeploy.export import onnx
        return onnx.runner(path, threads)
    raise ValueError(f"{path}: not a SavedModel directory, .tflite or .onnx file")


def next_version(root):
    """One above the highest numeric version directory under ``root`` (TF Serving layout)."""
    if not os.path.isdir(root):
        return 1
    versions = [int(d) for d in os.listdir(root) if d.isdigit()]
    return max(versions, default=0) + 1


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


def export_artifacts(recipe, context, model, sparse=False, qat=False):
    """Write every format in ``recipe.export.formats``; return the Artifacts in that order."""
    from tfdeploy.export import onnx, savedmodel, tflite

    cfg = recipe.export
    formats = list(cfg.formats)
    needs_savedmodel = any(f.startswith("tflite") for f in formats) or "savedmodel" in formats
    out, saved = [], None
    if needs_savedmodel:
        saved = savedmodel.export(model, context.plugin.input_specs(), context.task.label_names,
                                  cfg.dir, recipe.name, cfg.version)
        if "savedmodel" in formats:
            out.append(Artifact("savedmodel", saved))
    folder = os.path.join(context.run_dir, "artifacts")
    for fmt in formats:
        if fmt.startswith("tflite"):
            # A QAT model carries its own learned ranges: no calibration.
            rep = context.train.representative(cfg.calibration_examples, recipe.seed) \
                if fmt == "tflite_int8" and not qat else None
            path = os.path.join(folder, f"{recipe.name}.{fmt}.tflite")
            float_ops = tflite.FALLBACK_FLOAT_OPS if rep and cfg.int8_fallback == "always" \
                else ()
            out.append(Artifact(fmt, tflite.export(saved, fmt, path, rep, sparse, float_ops)))
    onnx_formats = [f for f in formats if f.startswith("onnx")]
    if onnx_formats:
        fp32 = os.path.join(folder, f"{recipe.name}.onnx_fp32.onnx")
        int8 = os.path.join(folder, f"{recipe.name}.onnx_int8.onnx")
        shape = getattr(context.plugin, "attention_shape", lambda: (0, 0))()
        onnx.export(model, context.plugin.input_specs(), fp32,
                    int8 if "onnx_int8" in onnx_formats else None, cfg.opset, *shape)
        out.extend(Artifact(f, fp32 if f == "onnx_fp32" else int8) for f in onnx_formats)
    if saved and "savedmodel" not in formats and not (
            "tflite_int8" in formats and cfg.int8_fallback == "on_gate"):
        import shutil
        shutil.rmtree(saved)  # only needed as the TFLite converter's input
    return out


def int8_fallback(recipe, context, artifacts):
    """Convert tflite_int8 again with sensitive ops in float; the new Artifact."""
    from tfdeploy.export import tflite

    saved = next((a.path for a in artifacts if a.name == "savedmodel"), None) or os.path.join(
        recipe.export.dir, recipe.name, str(max(int(v) for v in os.listdir(
            os.path.join(recipe.export.dir, recipe.name)) if v.isdigit())))
    path = os.path.join(context.run_dir, "artifacts",
                        f"{recipe.name}.tflite_int8_fallback.tflite")
    rep = context.train.representative(recipe.export.calibration_examples, recipe.seed)
    return Artifact("tflite_int8_fallback",
                    tflite.export(saved, "tflite_int8", path, rep, False,
                                  tflite.FALLBACK_FLOAT_OPS))
