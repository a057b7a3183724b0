"""BertConfig: the architecture a checkpoint's config.json (or a recipe) describes."""
import dataclasses
import math

import tensorflow as tf

from tfdeploy import files
from tfdeploy.errors import CheckpointError


INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu",  # "gelu" is exact (erf) GELU, as in HF
                "gelu_new": lambda x: tf.nn.gelu(x, approximate=True),
                "gelu_pytorch_tanh": lambda x: tf.nn.gelu(x, approximate=True)}


@dataclasses.dataclass
class BertConfig:
    """Mirrors Hugging Face ``BertConfig`` (the fields that shape the network)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path):
        raw = files.read_json_object(path, "checkpoint file", CheckpointError)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    def validate(self, where):
        """Types and ranges first (a config.json or recipe may hold anything), then the
        shape rules."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"int": int, "float": (int, float), "str": str}[f.type if isinstance(
                f.type, str) else f.type.__name__]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise CheckpointError(f"{where}: {f.name} {value!r} is not "
                                      f"{'an integer' if kind is int else 'a ' + f.type}")
            if f.type in (int, "int") and not 1 <= value <= 10**7:
                raise CheckpointError(f"{where}: {f.name} {value} is not in [1, 10000000]")
            if f.type in (float, "float") and not (math.isfinite(value) and 0 <= value < 1):
                raise CheckpointError(f"{where}: {f.name} {value} is not in [0, 1)")
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(f"{where}: hidden_size {self.hidden_size} is not divisible "
                                  f"by num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise CheckpointError(f"{where}: hidden_act {self.hidden_act!r} is not supported "
                                  f"({', '.join(_ACTIVATIONS)})")
