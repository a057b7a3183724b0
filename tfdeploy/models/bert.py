"""BERT encoders in tf_keras, loadable from Hugging Face checkpoints without torch.

Public API::

    encoder, tokenizer = tfdeploy.models.bert.from_pretrained("minilm-l6")
    hidden = encoder(tokenizer(["a sentence", "another"]))   # [batch, seq, hidden]

The graph uses only real Keras layers for weights (``Embedding``, ``Dense``,
``LayerNormalization``) and ``keras.layers.Add`` for residuals, so TFMOT can wrap every
weight matrix; the small weightless pieces live in :mod:`tfdeploy.models.bert_layers`.
"""
import dataclasses
import math
import os
from typing import Any, Dict, List, Literal, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy import files
from tfdeploy.errors import CheckpointError, StageError
from tfdeploy.models import MODELS, ModelPlugin
from tfdeploy.models import checkpoints
from tfdeploy.models.bert_layers import (AttentionMaskBias, ClsPooling, MaskedMeanPooling,
                                         PositionEmbedding, RowsToTokens, SelfAttention,
                                         TokensToRows, custom_objects)
from tfdeploy.recipe.fields import ModelConfig, field

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


# -- graph -------------------------------------------------------------------------------------
def bert_inputs():
    return {name: keras.Input(shape=(None,), dtype=tf.int32, name=name) for name in INPUT_NAMES}


def encoder_graph(inputs, cfg: BertConfig):
    """Wire the encoder on ``inputs``; returns the last hidden state as token rows
    ``[batch * seq, hidden]`` (see bert_layers for why rows)."""
    def dense(units, name):
        return keras.layers.Dense(units, name=name, kernel_initializer=keras.initializers.
                                  TruncatedNormal(stddev=0.02))

    eps = cfg.layer_norm_eps
    words = keras.layers.Embedding(cfg.vocab_size, cfg.hidden_size,
                                   name="embeddings_word")(inputs["input_ids"])
    positions = PositionEmbedding(cfg.max_position_embeddings, cfg.hidden_size,
                                  name="embeddings_position")(words)
    types = keras.layers.Embedding(cfg.type_vocab_size, cfg.hidden_size,
                                   name="embeddings_token_type")(inputs["token_type_ids"])
    x = keras.layers.Add(name="embeddings_sum")([words, positions, types])
    x = TokensToRows(name="embeddings_rows")(x)
    x = keras.layers.LayerNormalization(epsilon=eps, name="embeddings_layernorm")(x)
    x = keras.layers.Dropout(cfg.hidden_dropout_prob, name="embeddings_dropout")(x)
    bias = AttentionMaskBias(name="attention_mask_bias")(inputs["attention_mask"])
    for i in range(cfg.num_hidden_layers):
        p = f"layer_{i}_"
        # Identity layers mark where a matmul reads a tensor that the residual path also
        # reads: QAT quantizes there, so the residual Add and LayerNorm stay float.
        x_in = keras.layers.Identity(name=p + "attention_input")(x)
        q = dense(cfg.hidden_size, p + "attention_query")(x_in)
        k = dense(cfg.hidden_size, p + "attention_key")(x_in)
        v = dense(cfg.hidden_size, p + "attention_value")(x_in)
        context = SelfAttention(cfg.num_attention_heads, cfg.attention_probs_dropout_prob,
                                name=p + "attention")([q, k, v, bias])
        attn = dense(cfg.hidden_size, p + "attention_output")(context)
        attn = keras.layers.Dropout(cfg.hidden_dropout_prob, name=p + "attention_dropout")(attn)
        x = keras.layers.Add(name=p + "attention_residual")([x, attn])
        x = keras.layers.LayerNormalization(epsilon=eps, name=p + "attention_layernorm")(x)
        h = dense(cfg.intermediate_size, p + "intermediate")(
            keras.layers.Identity(name=p + "intermediate_input")(x))
        h = keras.layers.Activation(_ACTIVATIONS[cfg.hidden_act], name=p + "intermediate_act")(h)
        h = dense(cfg.hidden_size, p + "output")(h)
        h = keras.layers.Dropout(cfg.hidden_dropout_prob, name=p + "output_dropout")(h)
        x = keras.layers.Add(name=p + "output_residual")([x, h])
        x = keras.layers.LayerNormalization(epsilon=eps, name=p + "output_layernorm")(x)
    return x


def build_encoder(cfg: BertConfig, name="bert_encoder"):
    inputs = bert_inputs()
    hidden = RowsToTokens(name="last_hidden_state")([encoder_graph(inputs, cfg),
                                                      inputs["attention_mask"]])
    return keras.Model(inputs, hidden, name=name)


def build_classifier(cfg: BertConfig, num_labels, pooling="mean", dropout=0.1,
                     name="bert_classifier"):
    """One flat functional model (no nested models, so TFMOT's clone sees every layer)."""
    inputs = bert_inputs()
    hidden = encoder_graph(inputs, cfg)
    pool = MaskedMeanPooling if pooling == "mean" else ClsPooling
    pooled = pool(name="pooling")([hidden, inputs["attention_mask"]])
    pooled = keras.layers.Dropout(dropout, name="classifier_dropout")(pooled)
    logits = keras.layers.Dense(num_labels, name="classifier",
                                kernel_initializer=keras.initializers.TruncatedNormal(
                                    stddev=0.02))(pooled)
    return keras.Model(inputs, logits, name=name)


# -- Hugging Face weights ----------------------------------------------------------------------
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


# -- tokenizer ---------------------------------------------------------------------------------
VOCAB_LIMIT = 64 << 20  # a WordPiece vocabulary is a few hundred KiB


class BertTokenizer:
    """WordPiece from vocab.txt via the ``tokenizers`` package: [CLS] text [SEP]."""

    def __init__(self, vocab_path, lowercase=True, max_length=128):
        from tokenizers import BertWordPieceTokenizer

        text = files.read_text(vocab_path, "vocabulary file", CheckpointError, VOCAB_LIMIT)
        self.vocab_size = text.count("\n") + (not text.endswith("\n"))
        self.vocab_path, self.lowercase, self.max_length = vocab_path, lowercase, max_length
        self._tok = BertWordPieceTokenizer(vocab_path, lowercase=lowercase,
                                           strip_accents=lowercase)
        for token in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if self._tok.token_to_id(token) is None:
                raise CheckpointError(f"{vocab_path}: special token {token} not in vocabulary")
        self.pad_id = self._tok.token_to_id("[PAD]")
        self.cls_id, self.sep_id = (self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]"))
        mask_id = self._tok.token_to_id("[MASK]")  # vocabularies without it: [UNK]
        self.mask_id = self._tok.token_to_id("[UNK]") if mask_id is None else mask_id

    def encode_ragged(self, texts, max_length=None):
        """Token ids per text, truncated to max_length (with [CLS]/[SEP]); no padding."""
        max_length = max_length or self.max_length
        self._tok.enable_truncation(max_length)
        self._tok.no_padding()
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(list(texts))]

    def __call__(self, texts, max_length=None, pad_to=None):
        """Dict of int32 [batch, seq] arrays padded to the longest text (or ``pad_to``)."""
        ids = self.encode_ragged(texts, max_length)
        return pad_batch(ids, pad_to or max(len(i) for i in ids), self.pad_id)

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids])


def token_inputs(batch, seq, vocab=30522, seed=0):
    """Token ids shaped like real input, for benchmarks: [CLS] ... [SEP] (BERT's ids 101
    and 102), full attention mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, min(vocab, 30000), size=(batch, seq), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}


def pad_batch(ids, length, pad_id=0):
    batch = np.full((len(ids), length), pad_id, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for row, seq in enumerate(ids):
        batch[row, :len(seq)] = seq[:length]
        mask[row, :len(seq)] = 1
    return {"input_ids": batch, "attention_mask": mask,
            "token_type_ids": np.zeros_like(batch)}


def _lowercase(directory):
    path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(path):
        config = files.read_json_object(path, "checkpoint file", CheckpointError)
        return bool(config.get("do_lower_case", True))
    return True


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
    tokenizer = BertTokenizer(os.path.join(directory, "vocab.txt"), _lowercase(directory))
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


# -- recipe plugin -----------------------------------------------------------------------------
@MODELS.register("bert")
class Bert(ModelPlugin):
    takes = frozenset({"text"})

    """BERT sequence classifier: pretrained encoder + pooling + dropout + dense head."""

    sequence_input = True  # token ids: batches are bucketed by length
    capabilities = frozenset({"student_layers", "hidden_states", "augment"})

    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        checkpoint: Optional[str] = field(
            "minilm-l6", doc="Checkpoint short name (minilm-l6) or a directory with "
                             "config.json, model.safetensors, vocab.txt; null = random init "
                             "from `architecture` (then `vocab` names the vocabulary).")
        vocab: Optional[str] = field(None, doc="Checkpoint name or directory whose vocab.txt "
                                               "to use with a random-init model.")
        layers: Optional[List[int]] = field(None, doc="Checkpoint layers to keep, in order "
                                                      "(e.g. [0, 2, 4]); null = all.")
        architecture: Dict[str, Any] = field(factory=dict, doc="BertConfig fields for random init "
                                                     "(num_hidden_layers, hidden_size, ...).")
        pooling: Literal["mean", "cls"] = field("mean", doc="Sentence pooling for the head.")
        dropout: float = field(0.1, ge=0, lt=1, doc="Dropout before the classifier.")

        def check(self):
            if self.checkpoint is None and self.vocab is None:
                yield ("vocab", "a random-init model (checkpoint: null) needs a vocab")
            if self.checkpoint is not None and self.architecture:
                yield ("architecture", "only used with checkpoint: null (the checkpoint's "
                                       "config.json fixes the architecture)")
            names = {f.name for f in dataclasses.fields(BertConfig)}
            for key in self.architecture:
                if key not in names:
                    yield (("architecture", key), f"not a BertConfig field; known: "
                                                  f"{', '.join(sorted(names))}")

    def __init__(self, config, num_labels):
        super().__init__(config, num_labels)
        if config.checkpoint is not None:
            self.bert_config, self._state, self.tokenizer, self._layers, self._source = \
                load_checkpoint(config.checkpoint, config.layers)
        else:
            directory = checkpoints.resolve(config.vocab)
            self.tokenizer = BertTokenizer(os.path.join(directory, "vocab.txt"),
                                           _lowercase(directory))
            arch = dict(config.architecture)
            arch.setdefault("vocab_size", self.tokenizer.vocab_size)
            self.bert_config = BertConfig(**arch)
            self.bert_config.validate("model.architecture")
            self._state = None

    def build(self):
        model = build_classifier(self.bert_config, self.num_labels, self.config.pooling,
                                 self.config.dropout)
        if self._state is not None:
            load_hf_weights(model, self._state, self.bert_config, self._layers, self._source)
        return model

    def current_graph(self, model):
        """``model``'s weights in today's graph: models saved before the graph gained its
        weightless Identity layers are rebuilt (same layer count), weights copied by name."""
        if any(l.name == "layer_0_attention_input" for l in model.layers):
            return model
        count = sum(1 for l in model.layers if l.name.endswith("_output_layernorm"))
        fresh = build_classifier(dataclasses.replace(self.bert_config, num_hidden_layers=count),
                                 self.num_labels, self.config.pooling, self.config.dropout)
        for layer in fresh.layers:
            if layer.weights:
                layer.set_weights(model.get_layer(layer.name).get_weights())
        return fresh

    def encode(self, texts, max_length):
        return {"input_ids": self.tokenizer.encode_ragged(texts, max_length)}

    def features(self, ids):
        # [PAD] never comes out of the tokenizer for real text, so it marks padding exactly.
        return {"input_ids": ids,
                "attention_mask": tf.cast(tf.not_equal(ids, self.tokenizer.pad_id), tf.int32),
                "token_type_ids": tf.zeros_like(ids)}

    def serving_text(self):
        tok = self.tokenizer
        return {"tokenizer": "wordpiece", "lowercase": tok.lowercase, "pad_id": tok.pad_id,
                "inputs": {"input_ids": "ids", "attention_mask": "mask",
                           "token_type_ids": "zeros"},
                "files": {"vocab": tok.vocab_path}}

    def check_student_layers(self, layers):
        count = self.bert_config.num_hidden_layers
        bad = [i for i in layers if not 0 <= i < count]
        if bad or not layers:
            raise StageError(f"distill: student_layers {layers}: the teacher has {count} "
                             f"layers (0..{count - 1})")

    def student_from(self, teacher, layers):
        """A shallower classifier whose layer i starts as the teacher's ``layers[i]``."""
        bad = [i for i in layers if not 0 <= i < self.bert_config.num_hidden_layers]
        if bad or not layers:
            raise CheckpointError(f"student layers {layers}: the teacher has "
                                  f"{self.bert_config.num_hidden_layers} layers")
        cfg = dataclasses.replace(self.bert_config, num_hidden_layers=len(layers))
        student = build_classifier(cfg, self.num_labels, self.config.pooling,
                                   self.config.dropout)
        for layer in student.layers:
            source = layer.name
            if layer.name.startswith("layer_"):
                index, rest = layer.name[len("layer_"):].split("_", 1)
                source = f"layer_{layers[int(index)]}_{rest}"
            if layer.weights:
                layer.set_weights(teacher.get_layer(source).get_weights())
        return student

    def custom_objects(self):
        return custom_objects()

    def files(self):
        directory = checkpoints.resolve(self.config.checkpoint or self.config.vocab)
        return [os.path.join(directory, f) for f in checkpoints.MODEL_FILES
                if os.path.exists(os.path.join(directory, f))]

    def hidden_states(self, model):
        """Embedding output, then each encoder layer's output, as token rows: what a
        hidden-state distillation loss compares."""
        count = sum(1 for l in model.layers if l.name.endswith("_output_layernorm"))
        names = ["embeddings_layernorm"] + [f"layer_{i}_output_layernorm" for i in range(count)]
        return [model.get_layer(n).output for n in names]

    def augment(self, inputs, rate):
        """A perturbed copy of a batch for distillation: each real word piece becomes
        [MASK] with probability ``rate``; [CLS], [SEP] and padding stay."""
        tok = self.tokenizer
        ids = inputs["input_ids"]
        keep = (tf.equal(inputs["attention_mask"], 0) | tf.equal(ids, tok.cls_id)
                | tf.equal(ids, tok.sep_id))
        hit = tf.random.uniform(tf.shape(ids)) < rate
        return {**inputs, "input_ids": tf.where(hit & ~keep, tf.cast(tok.mask_id, ids.dtype),
                                                ids)}

    @staticmethod
    def row_weights(inputs):
        """[rows, 1]: 1 for real tokens, 0 for padding, in token-row order."""
        return tf.reshape(tf.cast(inputs["attention_mask"], tf.float32), [-1, 1])

    def synthetic_inputs(self, batch, seq_length, seed=0):
        return token_inputs(batch, seq_length, self.bert_config.vocab_size, seed)

    def onnx_rewrite(self, proto):
        """Attention blocks into ONNX Runtime's Attention op, then ORT's BERT optimizer."""
        from tfdeploy.models import bert_onnx

        return bert_onnx.rewrite(proto, self.bert_config.num_attention_heads,
                                 self.bert_config.hidden_size)

    def input_specs(self):
        return {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in INPUT_NAMES}
