"""A BERT checkpoint folder (or a known name): its config, weights and tokenizer."""
import dataclasses
import os


from tfdeploy.errors import CheckpointError
from tfdeploy.models import checkpoints
from tfdeploy.models.bert.config import BertConfig
from tfdeploy.models.bert.graph import build_encoder
from tfdeploy.models.bert.tokenizer import BertTokenizer, lowercases
from tfdeploy.models.bert.weights import load_hf_weights, read_state_dict


def load_checkpoint(name_or_path, layers=None):
    """(BertConfig, state dict, tokenizer, layer selection) from a checkpoint dir or name."""
    directory = checkpoints.resolve(name_or_path)
    for fname in ("config.json", "model.safetensors", "vocab.txt"):
        if not os.path.exists(os.path.join(directory, fname)):
            raise CheckpointError(f"checkpoint {name_or_path!r}: {fname} missing in {directory}")
    cfg_path = os.path.join(directory, "config.json")
    try:
        cfg = BertConfig.from_json(cfg_path)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: not a valid BERT config ({e})") from None
    cfg.validate(cfg_path)
    tokenizer = BertTokenizer(os.path.join(directory, "vocab.txt"), lowercases(directory))
    if tokenizer.vocab_size != cfg.vocab_size:
        raise CheckpointError(f"{directory}: vocab.txt has {tokenizer.vocab_size} tokens but "
                              f"config.json says vocab_size {cfg.vocab_size}")
    layers = list(range(cfg.num_hidden_layers)) if layers is None else list(layers)
    bad = [i for i in layers if not 0 <= i < cfg.num_hidden_layers]
    if bad:
        raise CheckpointError(f"model.layers {layers}: checkpoint {name_or_path!r} has "
                              f"{cfg.num_hidden_layers} layers; cannot take layers {bad}")
    cfg = dataclasses.replace(cfg, num_hidden_layers=len(layers))
    state = read_state_dict(os.path.join(directory, "model.safetensors"))
    return cfg, state, tokenizer, layers, directory


def from_pretrained(name_or_path, layers=None):
    """``(encoder, tokenizer)`` for a checkpoint short name (``minilm-l6``) or directory."""
    cfg, state, tokenizer, layers, directory = load_checkpoint(name_or_path, layers)
    encoder = build_encoder(cfg)
    load_hf_weights(encoder, state, cfg, layers, directory)
    return encoder, tokenizer
