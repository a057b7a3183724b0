"""Hugging Face BERT weights (safetensors, read without torch) into the tf-keras graph."""
from typing import List

import numpy as np

from tfdeploy import files
from tfdeploy.errors import CheckpointError
from tfdeploy.models.bert.config import BertConfig


def hf_weight_map(cfg: BertConfig, layers: List[int]):
    """Our layer name -> list of (HF tensor name, transpose?) in Keras weight order.

    ``layers`` picks which checkpoint layers fill our layers 0..n-1 (e.g. [0, 2, 4]).
    """
    def ln(prefix):
        return [(prefix + ".weight", False), (prefix + ".bias", False)]

    def lin(prefix):
        return [(prefix + ".weight", True), (prefix + ".bias", False)]

    out = {
        "embeddings_word": [("embeddings.word_embeddings.weight", False)],
        "embeddings_position": [("embeddings.position_embeddings.weight", False)],
        "embeddings_token_type": [("embeddings.token_type_embeddings.weight", False)],
        "embeddings_layernorm": ln("embeddings.LayerNorm"),
    }
    for ours, theirs in enumerate(layers):
        p, t = f"layer_{ours}_", f"encoder.layer.{theirs}."
        out.update({
            p + "attention_query": lin(t + "attention.self.query"),
            p + "attention_key": lin(t + "attention.self.key"),
            p + "attention_value": lin(t + "attention.self.value"),
            p + "attention_output": lin(t + "attention.output.dense"),
            p + "attention_layernorm": ln(t + "attention.output.LayerNorm"),
            p + "intermediate": lin(t + "intermediate.dense"),
            p + "output": lin(t + "output.dense"),
            p + "output_layernorm": ln(t + "output.LayerNorm"),
        })
    return out


def read_state_dict(path):
    from safetensors.numpy import load_file

    files.checked(path, "checkpoint file", CheckpointError)
    try:
        tensors = load_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint file {path}: not a readable safetensors file "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    out = {}
    for name, value in tensors.items():
        # Checkpoints saved from BertFor* models prefix names with "bert."; old ones say gamma.
        name = name[len("bert."):] if name.startswith("bert.") else name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias")
        out[name] = value
    return out


def load_hf_weights(model, state, cfg: BertConfig, layers, source):
    for layer_name, entries in hf_weight_map(cfg, layers).items():
        layer = model.get_layer(layer_name)
        values = []
        for tensor_name, transpose in entries:
            if tensor_name not in state:
                raise CheckpointError(f"{source}: tensor {tensor_name!r} missing "
                                      f"(needed for layer {layer_name})")
            value = state[tensor_name].astype(np.float32)
            values.append(value.T if transpose else value)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [v.shape for v in values]
        if expected != got:
            raise CheckpointError(f"{source}: {layer_name} expects shapes {expected}, "
                                  f"checkpoint has {got} (does config.json match the weights?)")
        layer.set_weights(values)
