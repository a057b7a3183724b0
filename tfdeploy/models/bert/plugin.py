"""`type: bert`: the recipe's model plugin for BERT encoders with a classifier head."""
import dataclasses
import os
from typing import Any, Dict, List, Literal, Optional

import tensorflow as tf

from tfdeploy.errors import CheckpointError, StageError
from tfdeploy.models import MODELS, ModelPlugin
from tfdeploy.models import checkpoints
from tfdeploy.models.bert.checkpoint import load_checkpoint
from tfdeploy.models.bert.config import INPUT_NAMES, BertConfig
from tfdeploy.models.bert.graph import build_classifier
from tfdeploy.models.bert.layers import custom_objects
from tfdeploy.models.bert.tokenizer import BertTokenizer, lowercases, token_inputs
from tfdeploy.models.bert.weights import load_hf_weights
from tfdeploy.recipe.fields import ModelConfig, field


@MODELS.register("bert")
class Bert(ModelPlugin):
    """BERT sequence classifier: pretrained encoder + pooling + dropout + dense head."""

    takes = frozenset({"text"})
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
                                           lowercases(directory))
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
        from tfdeploy.models.bert import onnx_rewrite

        return onnx_rewrite.rewrite(proto, self.bert_config.num_attention_heads,
                                 self.bert_config.hidden_size)

    def input_specs(self):
        return {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in INPUT_NAMES}
