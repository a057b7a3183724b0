"""Export formats: one registered :class:`Format` per artifact kind.

A format declares its runtime, whether it is float (so it must match the Keras model
exactly) and how it writes itself from an :class:`~tfdeploy.export.job.ExportJob`, which
hands out what formats share (the SavedModel the TFLite converter reads, calibration rows,
the float ONNX graph the int8 one quantizes) and writes each only once. To add a format, add
a module here with a ``Format`` subclass decorated ``@register``; the recipe schema's list of
formats comes from this registry.
"""
import dataclasses
import os

from tfdeploy.export import runtime as runtimes

_FORMATS = {}


class Format:
    """One artifact kind. Subclasses set the class attributes and implement ``write``."""

    name = ""
    runtime = ""        # "tf", "litert" or "onnxruntime": what runs the file
    is_float = False    # float artifacts must agree with Keras within float_tolerance
    suffix = ""         # file name ending; "" for a directory
    order = 100         # position in the default list (and in the JSON Schema)
    # Precision ladder of a quantized format whose layers can be kept at a higher precision
    # (its own first, e.g. ("int4", "int8", "float")); () = no per-layer control, so the
    # accuracy search (tfdeploy.search) cannot help it.
    precisions = ()

    def write(self, job, path):
        """Write the artifact to ``path`` (atomically) and return the path."""
        raise NotImplementedError

    def layers(self, job):
        """[(layer, op type)] this format quantizes, in model order (with ``precisions``)."""
        return []

    def write_mixed(self, job, path, kept):
        """Write with each layer of ``kept`` ({layer: precision from ``precisions``}) at
        that precision instead of the format's own; return the path."""
        raise NotImplementedError(f"{self.name} has no per-layer precision")

    def mixed_recipe(self, job, kept):
        """JSON-able description of the mix ``kept`` that reproduces the file."""
        return {"kept": dict(kept)}

    def dry_run(self, model, recipe):
        """Lines for ``--dry_run``: what this format will quantize in the Keras ``model``
        under the tfdeploy ``recipe``, or () when it quantizes nothing."""
        return ()

    def refuses(self, traits):
        """Why this format cannot be made from a model with these
        :class:`~tfdeploy.traits.Traits` (checked before any work), or None."""
        return None

    def weight_sparsity(self, path):
        """Share of zeros in the matmul/conv weights stored in the file, or None (not
        measured for this format)."""
        return None

    def gate_fallback(self, job):
        """Another :class:`Artifact` to try when this one missed its gate (written now),
        or None: the format has no fallback (the default)."""
        return None


def weight_layers(model):
    """[(layer name, class name, kind)] of the Keras layers whose weights quantizers act on;
    kind: dense, embedding, conv or depthwise (what they become in TFLite and ONNX)."""
    import tf_keras as keras

    kinds = ((keras.layers.Embedding, "embedding"), (keras.layers.DepthwiseConv2D, "depthwise"),
             (keras.layers.Conv2D, "conv"), (keras.layers.Dense, "dense"),
             (keras.layers.EinsumDense, "dense"))
    out = []
    for layer in model.layers:  # the plugins build flat functional models
        kind = next((k for cls, k in kinds if isinstance(layer, cls)), None)
        if kind:
            out.append((layer.name, type(layer).__name__, kind))
    return out


def check_formats(formats, exported_traits):
    """Refuse, before any work, formats that no exporting stage can make:
    ``exported_traits`` is [(stage name, planned traits)] of the stages that export. A
    format that only some of them can make is skipped at the others (see ``not_made``)."""
    from tfdeploy.errors import RecipeError

    refused = []
    for name in formats:
        why = {stage: get(name).refuses(traits) for stage, traits in exported_traits}
        if all(why.values()):
            refused += [("export.formats", f"{name} cannot be made after stage {stage}: "
                         f"{reason}", None) for stage, reason in why.items()]
    if refused:
        raise RecipeError(refused)


def not_made(formats, traits):
    """{format: why} of ``formats`` that cannot be made from a model with ``traits``."""
    return {name: why for name in formats for why in [get(name).refuses(traits)] if why}


def register(cls):
    if cls.name in _FORMATS:
        raise ValueError(f"export format {cls.name!r} registered twice")
    _FORMATS[cls.name] = cls()
    return cls


def get(name):
    return _FORMATS[name]


def names():
    return tuple(sorted(_FORMATS, key=lambda n: (_FORMATS[n].order, n)))


@dataclasses.dataclass
class Artifact:
    name: str
    path: str

    @property
    def runtime(self):
        """The name of the runtime that runs it: its format's, else the one that
        recognizes the file."""
        return _FORMATS[self.name].runtime if self.name in _FORMATS \
            else runtimes.of_file(self.path).name

    @property
    def is_float(self):
        return self.name in _FORMATS and _FORMATS[self.name].is_float

    def weight_sparsity(self):
        return _FORMATS[self.name].weight_sparsity(self.path) if self.name in _FORMATS \
            else None

    def runner(self, threads=2):
        """Callable: dict of numpy inputs -> numpy outputs (logits)."""
        return runtimes.get(self.runtime).runner(self.path, threads)

    def size(self):
        return dir_size(self.path) if os.path.isdir(self.path) else os.path.getsize(self.path)


def runner_for(path, threads=2):
    """A runner of the artifact at ``path``, by the runtime that recognizes it."""
    return runtimes.of_file(path).runner(path, threads)


def input_specs(path):
    """{input name: (shape with None for unknown dims, numpy dtype)} of an artifact."""
    return runtimes.of_file(path).input_specs(path)


def dir_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)


def _load_formats():
    from tfdeploy.recipe.fields import import_submodules

    import_submodules(__name__, __path__)


_load_formats()
FORMATS = names()
