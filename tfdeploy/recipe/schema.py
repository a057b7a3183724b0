"""The typed recipe: top-level sections and their fields, with defaults, units and docs.

Plugin sections (``model``, ``data``, each entry of ``stages``) are chosen by their ``type``
from the registries in ``tfdeploy.models``, ``tfdeploy.data`` and ``tfdeploy.stages``.
"""
import dataclasses
from typing import List, Literal, Optional

import tfdeploy.data  # noqa: F401  (fills the data registry)
import tfdeploy.models  # noqa: F401  (fills the model registry)
import tfdeploy.stages  # noqa: F401  (fills the stage registry)
from tfdeploy.export import FORMATS
from tfdeploy.serve.config import Serve
from tfdeploy.recipe.fields import NAME_PATTERN, DataConfig, ModelConfig, StageConfig, field



@dataclasses.dataclass(kw_only=True)
class Distribution:
    strategy: Literal["auto", "cpu", "one_device", "mirrored", "tpu", "multi_worker",
                      "parameter_server"] = field(
        "auto", doc="Where tuning and inference run. auto: TPU if a resolver finds one, else "
                    "Mirrored over all GPUs, else CPU. parameter_server: TF_CONFIG names a "
                    "chief (runs the recipe), workers and ps tasks (run the same command and "
                    "serve until stopped); big variables are sharded across the ps tasks.")
    devices: List[str] = field(factory=list, doc="Devices for one_device/mirrored, e.g. "
                                                 "['/gpu:0', '/gpu:1']; empty = all.")
    cross_device_ops: Literal["auto", "nccl", "hierarchical_copy", "reduction_to_one"] = field(
        "auto", doc="All-reduce implementation for mirrored.")
    communication: Literal["auto", "ring", "nccl"] = field(
        "auto", doc="Collective communication for multi_worker.")
    tpu: str = field("", doc="TPU name or grpc:// address for the tpu strategy; '' = local.")
    mixed_precision: Literal["none", "auto", "mixed_float16", "mixed_bfloat16"] = field(
        "none", doc="Keras mixed precision policy; auto = bfloat16 on TPU, float16 on GPU, "
                    "none on CPU.")
    min_shard_bytes: int = field(256 << 10, ge=1, doc="parameter_server: a variable is split "
                                                      "into shards of at least this many "
                                                      "bytes, at most one per ps task.",
                                 unit="bytes")
    logical_cpus: int = field(0, ge=0, le=64, doc="Split the CPU into this many logical "
                                                  "devices (0 = don't) so mirrored runs on a "
                                                  "CPU-only machine.")


@dataclasses.dataclass(kw_only=True)
class Export:
    formats: List[Literal[FORMATS]] = field(
        factory=lambda: ["savedmodel"], doc="Artifacts to write after the last stage: "
                                            "savedmodel (TF Serving), tflite_fp32, tflite_fp16, "
                                            "tflite_dynamic_int8, tflite_int8 (calibrated "
                                            "full int8; int8 from QAT ranges after a qat stage), "
                                            "onnx_fp32 (ORT-optimized), onnx_int8 (ORT dynamic), "
                                            "onnx_static_int8 (ORT QDQ), tflite_int4, "
                                            "tflite_w8, tflite_w4, tflite_recipe (LiteRT "
                                            "Quantizer); README: 'Exports'.")
    dir: str = field("saved_models", doc="Root of exports: <dir>/<recipe name>/<version>/ "
                                         "(TF Serving layout). Relative to the working dir.")
    version: int = field(0, ge=0, doc="Model version directory; 0 = one above the highest "
                                      "existing version.")
    opset: int = field(17, ge=13, le=21, doc="ONNX opset for onnx_* formats.")
    calibration_examples: int = field(100, ge=1, le=100000, doc="Training examples used to calibrate "
                                                     "tflite_int8 activation ranges.")
    quantizer_recipe: str = field("", doc="A LiteRT Quantizer recipe JSON (a list of rules: "
                                          "regex, operation, algorithm_key, op_config) for "
                                          "the tflite_recipe format, e.g. the "
                                          "<artifact>.recipe.json an accuracy search saved. "
                                          "Read as data.")
    int8_granularity: Literal["per_channel", "per_tensor"] = field(
        "per_channel", doc="Weight scales of the post-training int8 formats (tflite_int8, "
                           "onnx_static_int8): one per output channel, or one per tensor. "
                           "Per tensor drops a float scale and an int64 zero point for "
                           "every channel of every weight and bias (8% of a narrow CNN's "
                           "int8 file), usually at some accuracy. A QAT model's quantizers "
                           "follow the qat stage's granularity instead.")
    int4_kernels: Literal["auto", "int8", "int4"] = field(
        "auto", doc="Kernels tfdeploy's runtime (evaluation, benchmark, server) runs the "
                    "int4 FULLY_CONNECTED weights of a LiteRT Quantizer file with: int8 = "
                    "widen them to int8 in memory at load (same values and scales, same "
                    "outputs), int4 = XNNPACK's int4 kernels, auto = int8 on a CPU with "
                    "AMX-INT8 (there XNNPACK's int8 kernels ran 1.1-1.2x faster than its "
                    "int4 ones), else int4 (0.90-0.97x of the int8 ones on an AVX-512-VNNI "
                    "CPU without AMX). A hint in the file's metadata, read at each load; "
                    "the file stays int4, and stock LiteRT ignores the hint.")
    int8_fallback: Literal["off", "on_gate", "always"] = field(
        "on_gate", doc="Full int8 (post-training) fallback that keeps the most sensitive "
                       "ops (LayerNorm pieces, softmax, elementwise, attention matmuls) in "
                       "float: on_gate = convert again that way when tflite_int8 fails "
                       "evaluate.max_drop; always = convert that way from the start.")


@dataclasses.dataclass(kw_only=True)
class Evaluate:
    batch_size: int = field(64, ge=1, le=65536, doc="Global batch size for evaluation.",
                            unit="examples")
    max_examples: int = field(0, ge=0, doc="Evaluate on at most this many examples; 0 = all.")
    max_drop: Optional[float] = field(None, ge=0, doc="Fail the run if an artifact's accuracy "
                                                      "drops more than this below the fp32 "
                                                      "baseline (the first stage's Keras "
                                                      "model): absolute (0.01 = 1 point) or, "
                                                      "with relative, a fraction of it.")
    relative: bool = field(False, doc="max_drop is relative to the baseline accuracy.")
    threads: int = field(2, ge=1, le=1024, doc="Threads for TFLite and ONNX Runtime "
                                               "evaluation.")
    float_tolerance: float = field(1e-4, gt=0, doc="Max abs logit difference allowed between "
                                                   "a float artifact and its Keras model.")
    search: Literal["off", "on_gate", "always"] = field(
        "on_gate", doc="Accuracy-aware mixed precision for quantized formats with per-layer "
                       "control (tflite_int4/w4/w8/recipe, onnx_int8, onnx_static_int8): "
                       "on_gate = when an artifact fails max_drop, rank its layers by "
                       "sensitivity and keep the most sensitive at a higher precision one by "
                       "one until the gate holds on the selection split; always = search "
                       "every such format. Needs max_drop and data.selection_split.")
    search_max_layers: int = field(8, ge=1, le=10000, doc="Most layers a search keeps at "
                                                         "higher precision.")
    search_seconds: float = field(1800.0, gt=0, doc="Time budget of one format's search.",
                                  unit="s")
    search_examples: int = field(256, ge=1, le=100000, doc="Selection rows the sensitivity "
                                                          "of each layer is measured on.",
                                 unit="examples")


@dataclasses.dataclass(kw_only=True)
class Benchmark:
    enabled: bool = field(False, doc="Benchmark exported artifacts after the run.")
    stages: Literal["last", "all"] = field(
        "last", doc="Whose artifacts are exported, evaluated and timed: the last stage's, or "
                    "every stage's (the report then shows latency and size per stage; only "
                    "the last stage's are gated and published).")
    batch_sizes: List[int] = field(factory=lambda: [1, 8], ge=1, le=4096, max_items=16,
                                   doc="Batch sizes to time.", unit="examples")
    seq_length: int = field(128, ge=2, le=4096, doc="Sequence length of the timed inputs.",
                            unit="tokens")
    lengths: Literal["fixed", "validation"] = field(
        "fixed", doc="fixed: every timed row is seq_length tokens. validation: each padded "
                     "length the validation split runs at (data.buckets) is timed, and each "
                     "artifact's median and p90 are weighted by that length's share of the "
                     "rows: the latency of this data. Text models only.")
    threads: int = field(2, ge=1, le=1024, doc="Threads for every runtime (recorded).")
    runs: int = field(200, ge=1, le=10**6, doc="Timed calls per variant (or until `seconds`).")
    seconds: float = field(10.0, gt=0, le=3600, doc="Timed seconds per variant (or until `runs`).",
                           unit="s")
    warmup_runs: int = field(10, ge=0, doc="Untimed calls per variant first.")
    warmup_seconds: float = field(0.5, ge=0, doc="Untimed seconds per variant first.", unit="s")
    block: int = field(5, ge=1, doc="Recorded consecutive calls per variant in each "
                                    "round-robin round.")
    settle: float = field(0.3, ge=0, doc="Unrecorded calls for this long after each switch "
                                         "of variant (the previous runtime's threads still "
                                         "spin).", unit="s")


@dataclasses.dataclass(kw_only=True)
class Output:
    dir: str = field("runs", doc="Run directories go to <dir>/<recipe name>/<run id>/.")
    tensorboard: bool = field(True, doc="Write TensorBoard logs for training stages.")


@dataclasses.dataclass(kw_only=True)
class Recipe:
    name: str = field(doc="Recipe name: names the run directory and the exported model.",
                      pattern=NAME_PATTERN, max_length=64)
    model: ModelConfig = field(doc="The model to start from (type-specific fields).")
    data: DataConfig = field(doc="The dataset (type-specific fields).")
    distribution: Distribution = field(factory=Distribution, doc="Where work runs.")
    stages: List[StageConfig] = field(factory=list, doc="Optimization stages, in order.")
    export: Export = field(factory=Export, doc="Artifacts written after the last stage.")
    evaluate: Evaluate = field(factory=Evaluate, doc="Evaluation after every stage.")
    benchmark: Benchmark = field(factory=Benchmark, doc="Latency/size benchmarks.")
    output: Output = field(factory=Output, doc="Where run directories go.")
    serve: Serve = field(factory=Serve, doc="How tfdeploy.serve (and run --serve) serves "
                                            "the published versions.")
    seed: int = field(0, ge=0, le=2**32 - 1, doc="Seed for data order, initialisation and dropout.")

    def __post_init__(self):
        # Every stage gets a unique name: its own, or its type with a counter.
        seen = {}
        for stage in self.stages:
            if stage.name is None:
                count = seen.get(stage.type, 0)
                stage.name = stage.type if count == 0 else f"{stage.type}_{count + 1}"
            seen[stage.type] = seen.get(stage.type, 0) + 1

    def check(self):
        names = [s.name for s in self.stages]
        for i, name in enumerate(names):
            if name in names[:i]:
                yield (("stages", i, "name"), f"stage name {name!r} is used twice; give each "
                                              "stage a unique name")
        yield from self.check_quantization()

    def check_quantization(self):
        if "tflite_recipe" in self.export.formats:
            if not self.export.quantizer_recipe:
                yield (("export", "quantizer_recipe"), "the tflite_recipe format needs a "
                                                        "LiteRT Quantizer recipe JSON here")
            else:
                from tfdeploy.export.litert import load_recipe
                try:
                    load_recipe(self.export.quantizer_recipe)
                except ValueError as e:
                    yield (("export", "quantizer_recipe"), str(e))
        if self.evaluate.search == "always":
            if self.evaluate.max_drop is None:
                yield (("evaluate", "search"), "a search stops when the gate holds: set "
                                               "evaluate.max_drop")
            if not self.data.selection_split:
                yield (("evaluate", "search"), "a search decides on the selection split: "
                                               "set data.selection_split > 0")


def to_dict(config):
    """A recipe (or any config) as plain data, for printing, hashing and the run dir."""
    return dataclasses.asdict(config)
