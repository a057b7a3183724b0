"""What the stages did to a model, carried with it from stage to stage and into export.

A stage returns a :class:`StageResult`: its model, its report and the model's traits.
Later stages (cluster keeps a pruned model's zeros, QAT picks its preserving scheme) and
the exporters (sparse TFLite, int8 from QAT ranges) read the traits, never stage type
names or recipe fields. Traits are saved with each finished stage, so a cached stage hands
on the same ones.
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class Traits:
    sparsity: float = 0.0          # share of zeros in the pruned weights; 0 = dense
    sparsity_pattern: str = ""     # "unstructured", "2:4", "block 1x4", "xnnpack"
    clusters: int = 0              # shared values per clustered weight matrix; 0 = none
    quantization_aware: str = ""   # the QAT scheme; "" = a float model
    distilled: bool = False
    selection_seen: bool = False   # a refit trained on the selection rows: they no longer
                                   # measure the model without bias

    @property
    def sparse(self):
        return self.sparsity > 0

    @property
    def clustered(self):
        return self.clusters > 0

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def trained_dense(self):
        """After plain training: zeros and shared values are gone, QAT wrappers stay."""
        return dataclasses.replace(self, sparsity=0.0, sparsity_pattern="", clusters=0)


@dataclasses.dataclass
class StageResult:
    model: object
    traits: Traits
    report: dict = dataclasses.field(default_factory=dict)
