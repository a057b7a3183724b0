"""The typed recipe: top-level sections and their fields, with defaults, units and docs.

Plugin sections (``model``, ``data``, each entry of ``stages``) are chosen by their ``type``
from the registries in ``tfdeploy.models``, ``tfdeploy.data`` and ``tfdeploy.stages``.
"""
import dataclasses
from typing import List, Literal, Optional

import tfdeploy.data  # noqa: F401  (fills the data registry)
import tfdeploy.models  # noqa: F401  (fills the model registry)
import tfdeploy.stages  # noqa: F401  (fills the stage registry)
from tfdeploy.recipe.fields import DataConfig, ModelConfig, StageConfig, field

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


@dataclasses.dataclass(kw_only=True)
class Distribution:
    strategy: Literal["auto", "cpu", "one_device", "mirrored", "tpu", "multi_worker"] = field(
        "auto", doc="Where tuning and inference run. auto: TPU if a resolver finds one, else "
                    "Mirrored over all GPUs, else CPU.")
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
    logical_cpus: int = field(0, ge=0, le=64, doc="Split the CPU into this many logical "
                                                  "devices (0 = don't) so mirrored runs on a "
                                                  "CPU-only machine.")


@dataclasses.dataclass(kw_only=True)
class Export:
    formats: List[Literal["savedmodel"]] = field(
        factory=lambda: ["savedmodel"], doc="Artifacts to write after the last stage.")
    dir: str = field("saved_models", doc="Root of exports: <dir>/<recipe name>/<version>/ "
                                         "(TF Serving layout). Relative to the working dir.")
    version: int = field(0, ge=0, doc="Model version directory; 0 = one above the highest "
                                      "existing version.")


@dataclasses.dataclass(kw_only=True)
class Evaluate:
    split: Literal["validation", "train"] = field("validation", doc="Split evaluated after "
                                                                    "every stage.")
    batch_size: int = field(64, ge=1, doc="Global batch size for evaluation.", unit="examples")
    max_examples: int = field(0, ge=0, doc="Evaluate on at most this many examples; 0 = all.")
    max_drop: Optional[float] = field(None, ge=0, doc="Fail the run if an artifact's accuracy "
                                                      "drops more than this (absolute, in "
                                                      "accuracy points 0-1) below the first "
                                                      "stage's.")


@dataclasses.dataclass(kw_only=True)
class Benchmark:
    enabled: bool = field(False, doc="Benchmark exported artifacts after the run.")


@dataclasses.dataclass(kw_only=True)
class Output:
    dir: str = field("runs", doc="Run directories go to <dir>/<recipe name>/<run id>/.")
    tensorboard: bool = field(True, doc="Write TensorBoard logs for training stages.")


@dataclasses.dataclass(kw_only=True)
class Recipe:
    name: str = field(doc="Recipe name: names the run directory and the exported model.",
                      pattern=NAME_PATTERN)
    model: ModelConfig = field(doc="The model to start from (type-specific fields).")
    data: DataConfig = field(doc="The dataset (type-specific fields).")
    distribution: Distribution = field(factory=Distribution, doc="Where work runs.")
    stages: List[StageConfig] = field(factory=list, doc="Optimization stages, in order.")
    export: Export = field(factory=Export, doc="Artifacts written after the last stage.")
    evaluate: Evaluate = field(factory=Evaluate, doc="Evaluation after every stage.")
    benchmark: Benchmark = field(factory=Benchmark, doc="Latency/size benchmarks.")
    output: Output = field(factory=Output, doc="Where run directories go.")
    seed: int = field(0, ge=0, doc="Seed for data order, initialisation and dropout.")

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


def to_dict(config):
    """A recipe (or any config) as plain data, for printing, hashing and the run dir."""
    return dataclasses.asdict(config)
