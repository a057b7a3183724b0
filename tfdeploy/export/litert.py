"""TFLite files quantized by Google's LiteRT Quantizer (PyPI ``litert-quantizer``).

The engine starts from the float TFLite file the export writes anyway and applies a recipe:
regex-selected ops, each with its bits, granularity and mode. The converter's own PTQ keeps
making ``tflite_fp16``, ``tflite_dynamic_int8`` and the calibrated ``tflite_int8`` (it
folds, fuses and calibrates in one pass); this engine makes what the converter cannot:

* ``tflite_int4``: dynamic int4 (weights int4, activations quantized to int8 at run time):
  per output channel for FULLY_CONNECTED (blockwise int4 ran 1.9x slower in XNNPACK on
  MiniLM), blocks of 32 for embedding tables (a lookup costs nothing, and blocks within a
  row keep each token's row accurate; on MiniLM blocks of 128 lost 1.6 points more on SST-2
  dev, per channel 1.4 more). The file asks tfdeploy's runtime to run the FULLY_CONNECTED
  weights on int8 kernels (``export.int4_kernels``, see ``int4_kernels``);
* ``tflite_w8`` / ``tflite_w4``: weight-only, the op computes in float after an explicit
  DEQUANTIZE: the smallest files at float accuracy, not faster;
* ``tflite_recipe``: the user's own recipe JSON (``export.quantizer_recipe``), e.g. the
  mixed-precision recipe an accuracy search saved.

The converter writes embedding lookups as GATHER, which the quantizer's dynamic and
weight-only modes do not quantize; they quantize the float file with each GATHER of a
constant table rewritten as EMBEDDING_LOOKUP (``tflite_rewrites.gathers_as_lookups``:
exact, same rows, same shapes).
"""
import re

from tfdeploy import files
from tfdeploy.export import Format, int4_kernels, register
from tfdeploy.rundir import atomic_write_bytes

ALGORITHM = "min_max_uniform_quantize"
QUANTIZED_OPS = ("FULLY_CONNECTED", "EMBEDDING_LOOKUP", "CONV_2D", "DEPTHWISE_CONV_2D",
                 "BATCH_MATMUL")


def rule(op, bits, granularity="CHANNELWISE", weight_only=False, regex=".*"):
    """One recipe entry: ``op`` ops whose output name matches ``regex`` get ``bits``-bit
    symmetric weights; dynamic (integer compute) unless ``weight_only``."""
    return {"regex": regex, "operation": op, "algorithm_key": ALGORITHM,
            "op_config": {"weight_tensor_config": {"num_bits": bits, "symmetric": True,
                                                   "granularity": granularity, "dtype": "INT"},
                          "compute_precision": "FLOAT" if weight_only else "INTEGER",
                          "explicit_dequantize": weight_only, "skip_checks": False,
                          "min_weight_elements": 0}}


def float_rule(op, regex):
    return {"regex": regex, "operation": op, "algorithm_key": "no_quantize"}


class QuantizerFormat(Format):
    """A LiteRT Quantizer recipe applied to the float TFLite file. ``precisions`` is the
    ladder an accuracy search climbs for a sensitive layer: the format's own first."""

    runtime, suffix = "litert", ".tflite"
    precisions = ()

    def rules(self, recipe):
        """The LiteRT Quantizer recipe (a list of rules) for the tfdeploy ``recipe``."""
        raise NotImplementedError

    def write(self, job, path):
        return self.write_mixed(job, path, {})

    def write_mixed(self, job, path, kept):
        """Write with each layer in ``kept`` ({layer: precision}) at that precision."""
        recipe = self.mixed_recipe(job, kept)
        data = quantize(job.tflite_lookups(), recipe)
        atomic_write_bytes(path, int4_kernels.mark(data, job.recipe.export.int4_kernels))
        return path

    def mixed_recipe(self, job, kept):
        """The recipe JSON with the overrides for ``kept`` appended (the last match wins)."""
        ops = dict(self.layers(job))
        extra = [self.override(ops[layer], scope_regex(layer), precision)
                 for layer, precision in kept.items()]
        return self.fitted_rules(job) + extra

    def fitted_rules(self, job):
        """The rules, plus a per-channel rule for each layer a blockwise rule cannot split
        (its last dimension is not a multiple of the block)."""
        rules = self.rules(job.recipe)
        return job.once(("litert_rules", self.name), lambda: rules + [
            rule(op, chosen["op_config"]["weight_tensor_config"]["num_bits"],
                 weight_only=chosen["op_config"].get("explicit_dequantize", False),
                 regex=scope_regex(name))
            for name, op, shape in op_outputs(job.tflite_lookups())
            for chosen in [last_rule(rules, op, name + ";")]
            if shape and not fits_blocks(chosen, shape)])

    def override(self, op, regex, precision):
        if precision == "float":
            return float_rule(op, regex)
        return rule(op, int(precision.removeprefix("int")), "CHANNELWISE", regex=regex)

    def layers(self, job):
        """[(layer, op)]: the ops this format's recipe quantizes, named by their output
        tensors (the quantizer's op scope, which the recipe's regexes match, is the names
        joined by ";" with a ";" after the last)."""
        recipe = self.rules(job.recipe)
        return job.once(("litert_layers", self.name), lambda: [
            (name, op) for name, op, _ in op_outputs(job.tflite_lookups())
            if op in QUANTIZED_OPS and quantized_by(recipe, op, name + ";")])

    def weight_sparsity(self, path):
        return None

    def dry_run(self, model, recipe):
        rows = plan(self.rules(recipe), model)
        lines = [f"{self.name} (LiteRT Quantizer; GATHERs of constant tables become "
                 f"EMBEDDING_LOOKUPs):"] + [f"  {layer:40s} {ops:36s} {scheme}"
                                             for layer, ops, scheme in rows]
        if any(scheme == "int4 per channel, dynamic" and "FULLY_CONNECTED" in ops
               for _, ops, scheme in rows):
            kernels = recipe.export.int4_kernels
            lines.append(f"  int4 FULLY_CONNECTED weights run on XNNPACK's "
                         f"{int4_kernels.resolve(kernels)} kernels in tfdeploy on this CPU "
                         f"(export.int4_kernels: {kernels})")
        return lines


@register
class Int4(QuantizerFormat):
    name, order, precisions = "tflite_int4", 14, ("int4", "int8", "float")

    def rules(self, recipe):
        return [rule("FULLY_CONNECTED", 4), rule("EMBEDDING_LOOKUP", 4, "BLOCKWISE_32")]


@register
class WeightOnly8(QuantizerFormat):
    name, order, precisions = "tflite_w8", 15, ("int8", "float")

    def rules(self, recipe):
        return [rule(op, 8, weight_only=True) for op in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP",
                                                         "CONV_2D", "DEPTHWISE_CONV_2D")]

    def override(self, op, regex, precision):
        return float_rule(op, regex)


@register
class WeightOnly4(QuantizerFormat):
    name, order, precisions = "tflite_w4", 16, ("int4", "int8", "float")

    def rules(self, recipe):
        return [rule(op, 4, weight_only=True) for op in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP",
                                                         "CONV_2D")]

    def override(self, op, regex, precision):
        if precision == "float":
            return float_rule(op, regex)
        return rule(op, 8, weight_only=True, regex=regex)


@register
class UserRecipe(QuantizerFormat):
    """``export.quantizer_recipe``: a LiteRT Quantizer recipe JSON, read as data."""

    name, order, precisions = "tflite_recipe", 17, ("recipe", "float")

    def rules(self, recipe):
        return load_recipe(recipe.export.quantizer_recipe)


def load_recipe(path):
    """A recipe JSON file: a list of rules with regex, operation and algorithm_key. Raises
    ValueError naming the file and what is wrong."""
    recipe = files.read_json(path, "quantizer recipe", ValueError)
    if not isinstance(recipe, list) or not recipe:
        raise ValueError(f"{path}: a quantizer recipe is a non-empty JSON list of rules")
    for i, entry in enumerate(recipe):
        missing = [k for k in ("regex", "operation", "algorithm_key")
                   if not isinstance(entry, dict) or not isinstance(entry.get(k), str)]
        if missing:
            raise ValueError(f"{path}: rule {i} needs string fields {', '.join(missing)}")
        try:
            re.compile(entry["regex"])
        except re.error as e:
            raise ValueError(f"{path}: rule {i}: regex {entry['regex']!r}: {e}") from e
    return recipe


def scope_regex(layer):
    """The regex matching exactly one op scope (output names joined by ";", then ";")."""
    return "^" + re.escape(layer) + ";$"


def last_rule(recipe, op, scope):
    """The rule of ``recipe`` that applies to an op (the last one matching), or None."""
    chosen = None
    for entry in recipe:
        if entry["operation"] in ("*", op) and re.search(entry["regex"], scope):
            chosen = entry
    return chosen


def quantized_by(recipe, op, scope):
    chosen = last_rule(recipe, op, scope)
    return chosen is not None and chosen["algorithm_key"] != "no_quantize"


def fits_blocks(entry, shape):
    """Whether a blockwise rule's block divides the weight's last dimension (the one the
    quantizer splits); True for any other rule."""
    if entry is None or entry["algorithm_key"] == "no_quantize":
        return True
    granularity = str(entry.get("op_config", {}).get("weight_tensor_config", {})
                      .get("granularity", ""))
    if not granularity.startswith("BLOCKWISE_"):
        return True
    return shape[-1] % int(granularity.removeprefix("BLOCKWISE_")) == 0


def quantize(float_tflite, recipe):
    """Bytes of ``float_tflite`` quantized by ``recipe`` (a list of rules)."""
    from litert_quantizer import quantizer

    q = quantizer.Quantizer(float_tflite, recipe)
    return bytes(q.quantize(enable_progress_bar=False,
                                enable_progress_report=False).quantized_model)


def op_outputs(data):
    """[(output tensor names joined by ";", op name, shape of input 1 or None)] of every op
    in a .tflite flatbuffer (input 1 is the weight of FULLY_CONNECTED, CONV_2D and
    EMBEDDING_LOOKUP)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    kinds = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    out = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            kind = kinds.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")
            names = [graph.tensors[i].name.decode() for i in op.outputs if i >= 0]
            weight = graph.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 \
                else None
            if any(names):
                out.append((";".join(n for n in names if n), kind,
                            tuple(int(d) for d in weight.shape) if weight is not None and
                            weight.shape is not None else None))
    return out


KIND_OPS = {"dense": "FULLY_CONNECTED", "embedding": "EMBEDDING_LOOKUP", "conv": "CONV_2D",
            "depthwise": "DEPTHWISE_CONV_2D"}


def describe(entry):
    """A recipe rule in words: 'int4 blockwise-32, dynamic'."""
    if entry is None or entry["algorithm_key"] == "no_quantize":
        return "float"
    config = entry.get("op_config", {})
    weights = config.get("weight_tensor_config", {})
    granularity = str(weights.get("granularity", "")).lower().replace("blockwise_",
                                                                        "blockwise-")
    mode = "weight-only" if config.get("explicit_dequantize") else \
        "static" if "activation_tensor_config" in config else "dynamic"
    return f"int{weights.get('num_bits', '?')} {granularity.replace('channelwise', 'per channel')}" \
           f", {mode}"


def plan(recipe, model):
    """[(layer, 'Dense -> FULLY_CONNECTED', scheme)]: what ``recipe`` does to each weight
    layer of a Keras model (op names as the converter writes them; regexes other than the
    catch-all ones match tensor names, known only after conversion)."""
    from tfdeploy.export import weight_layers

    out = []
    for layer, cls, kind in weight_layers(model):
        op = KIND_OPS[kind]
        chosen = None
        for entry in recipe:
            if entry["operation"] in ("*", op) and entry["regex"] in (".*", ""):
                chosen = entry
        out.append((layer, f"{cls} -> {op}", describe(chosen)))
    return out
