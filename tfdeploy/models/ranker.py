"""A rating/click model for recommendation: embeddings of user, item and side features, a
DCN-v2 cross network and an MLP tower, plus the matrix-factorisation terms (user . item,
user and item biases).

Every part is a stock tf-keras layer (Embedding, Dense, Multiply, Add, Dot), so TFMOT can
prune, cluster and quantize the dense part and the exporters see plain GATHERs. The
vocabularies come from the training split (:meth:`Ranker.adapt`); row 0 of every table is
the out-of-vocabulary row, so an unseen user or item still gets a prediction (from its
side features and the learned OOV rows).
"""
import dataclasses
from typing import List

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tfdeploy.errors import DataError
from tfdeploy.models import MODELS, ModelPlugin
from tfdeploy.recipe.fields import ModelConfig, field

IDS = ("user_id", "item_id")
TOKENS = ("age", "gender", "occupation", "year")  # side features with one token each
BAG = "genres"                                    # a "|"-separated bag of tokens


@dataclasses.dataclass
class Vocabularies:
    tokens: dict          # feature -> sorted array of known tokens (row = index + 1)
    genres: list          # bag tokens, in multi-hot column order
    start: float          # the output bias's start: the mean rating (or click log-odds)

    def rows(self, feature, values):
        """Table rows of ``values`` (0 for tokens not seen in training)."""
        known = self.tokens[feature]
        values = np.asarray(values).astype(known.dtype)
        at = np.minimum(np.searchsorted(known, values), max(len(known) - 1, 0))
        hit = known[at] == values if len(known) else np.zeros(len(values), bool)
        return np.where(hit, at + 1, 0).astype(np.int32)

    def multi_hot(self, bags):
        column = {g: i for i, g in enumerate(self.genres)}
        out = np.zeros((len(bags), len(self.genres)), np.float32)
        for r, bag in enumerate(bags):
            for token in str(bag).split("|"):
                if token in column:
                    out[r, column[token]] = 1.0
        return out


@MODELS.register("ranker")
class Ranker(ModelPlugin):
    takes = frozenset({"tables"})

    @dataclasses.dataclass(kw_only=True)
    class Config(ModelConfig):
        embedding_dim: int = field(64, ge=1, le=4096, doc="Width of the user and item "
                                                          "embeddings.")
        side_dim: int = field(8, ge=1, le=1024, doc="Width of each side feature's "
                                                    "embedding (age, gender, occupation, "
                                                    "year, genres).")
        cross_layers: int = field(2, ge=0, le=8, doc="DCN-v2 cross layers on the "
                                                     "concatenated embeddings.")
        hidden: List[int] = field(factory=lambda: [128, 64], ge=1, max_items=8,
                                  doc="Units of the MLP tower's Dense layers (ReLU).")
        l2: float = field(5e-3, ge=0, doc="L2 penalty on the embedding tables.")
        dropout: float = field(0.0, ge=0, lt=1, doc="Dropout on the concatenated "
                                                    "embeddings.")

    vocab = None

    def adapt(self, task):
        """Vocabularies (and the label mean) from the training rows only."""
        ex = task.train.examples
        names = ex.dtype.names or () if isinstance(ex, np.ndarray) else ()
        missing = [n for n in IDS + TOKENS + (BAG,) if n not in names]
        if missing:
            raise DataError(f"model ranker: the data has no feature {', '.join(missing)} (it "
                            f"needs {', '.join(IDS + TOKENS + (BAG,))}; use data type "
                            f"movielens)")
        if self.num_labels != 1:
            raise DataError(f"model ranker predicts one value (a rating or a click); the "
                            f"data has {self.num_labels} classes")
        genres = sorted({g for bag in ex[BAG] for g in str(bag).split("|") if g})
        mean = float(np.mean(task.train.labels))
        if task.objective.name == "auc":  # a logit: the log-odds of a click
            mean = float(np.log(np.clip(mean, 1e-6, 1 - 1e-6) / np.clip(1 - mean, 1e-6, 1)))
        self.vocab = Vocabularies({f: np.unique(ex[f]) for f in IDS + TOKENS}, genres, mean)

    def variant(self, config):
        other = super().variant(config)
        other.vocab = self.vocab
        return other

    def sizes(self):
        return {f: len(self.vocab.tokens[f]) + 1 for f in IDS + TOKENS}

    def build(self):
        cfg, sizes = self.config, self.sizes()
        reg = keras.regularizers.l2(cfg.l2) if cfg.l2 else None
        inputs = {f: keras.Input((), dtype="int32", name=f) for f in IDS + TOKENS}
        inputs[BAG] = keras.Input((len(self.vocab.genres),), name=BAG)

        def table(feature, width, name):
            return keras.layers.Embedding(sizes[feature], width, embeddings_regularizer=reg,
                                          name=name)(inputs[feature])

        user, item = table("user_id", cfg.embedding_dim, "user_embedding"), \
            table("item_id", cfg.embedding_dim, "item_embedding")
        side = [table(f, cfg.side_dim, f"{f}_embedding") for f in TOKENS]
        side.append(keras.layers.Dense(cfg.side_dim, use_bias=False, kernel_regularizer=reg,
                                       name="genres_embedding")(inputs[BAG]))
        x0 = keras.layers.Concatenate(name="features")([user, item] + side)
        if cfg.dropout:
            x0 = keras.layers.Dropout(cfg.dropout, name="features_dropout")(x0)
        x = x0
        for k in range(cfg.cross_layers):  # DCN-v2: x <- x0 * (W x + b) + x
            w = keras.layers.Dense(x0.shape[-1], name=f"cross_{k}")(x)
            x = keras.layers.Add(name=f"cross_{k}_residual")(
                [keras.layers.Multiply(name=f"cross_{k}_gate")([x0, w]), x])
        for k, units in enumerate(cfg.hidden):
            x = keras.layers.Dense(units, activation="relu", name=f"tower_{k}")(x)
        start = self.vocab.start if self.num_labels == 1 else 0.0
        tower = keras.layers.Dense(self.num_labels, name="tower_out",
                                   bias_initializer=keras.initializers.Constant(start))(x)
        dot = keras.layers.Dot(axes=1, name="user_item_dot")([user, item])
        out = keras.layers.Add(name="score")([
            tower, dot, table("user_id", 1, "user_bias"), table("item_id", 1, "item_bias")])
        return keras.Model(inputs, out, name="ranker")

    def encode(self, examples, max_length=None):
        out = {f: self.vocab.rows(f, examples[f]) for f in IDS + TOKENS}
        out[BAG] = self.vocab.multi_hot(examples[BAG])
        return out

    def raw_features(self):
        return RawFeatures(self.vocab)

    def serving_features(self):
        inputs = {f: {"kind": "token", "vocabulary": [str(t) for t in self.vocab.tokens[f]]}
                  for f in IDS + TOKENS}
        inputs[BAG] = {"kind": "bag", "separator": "|", "vocabulary": list(self.vocab.genres)}
        return {"inputs": inputs}

    def input_specs(self):
        specs = {f: tf.TensorSpec([None], tf.int32, name=f) for f in IDS + TOKENS}
        specs[BAG] = tf.TensorSpec([None, len(self.vocab.genres)], tf.float32, name=BAG)
        return specs

    def synthetic_inputs(self, batch, seq_length=None, seed=0):
        rng = np.random.default_rng(seed)
        out = {f: rng.integers(0, n, batch).astype(np.int32) for f, n in self.sizes().items()}
        out[BAG] = (rng.random((batch, len(self.vocab.genres))) < 0.15).astype(np.float32)
        return out


class RawFeatures(tf.Module):
    """Raw request features -> the ranker's inputs, inside the SavedModel: every id and
    token a string (``"196"``), genres one ``"|"``-separated string; unknown values
    take the out-of-vocabulary row, as in :meth:`Vocabularies.rows`."""

    def __init__(self, vocab):
        super().__init__()
        self.tables = {}
        for feature, known in vocab.tokens.items():
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant([str(k) for k in known]),
                tf.range(1, len(known) + 1, dtype=tf.int64))
            self.tables[feature] = tf.lookup.StaticHashTable(init, default_value=0)
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(vocab.genres), tf.range(len(vocab.genres), dtype=tf.int64))
        self.genre_table = tf.lookup.StaticHashTable(init, default_value=-1)
        self.width = len(vocab.genres)
        self.specs = {f: tf.TensorSpec([None], tf.string, name=f)
                      for f in IDS + TOKENS + (BAG,)}

    def __call__(self, raw):
        out = {f: tf.cast(self.tables[f].lookup(raw[f]), tf.int32) for f in IDS + TOKENS}
        columns = self.genre_table.lookup(tf.strings.split(raw[BAG], "|"))
        hot = tf.one_hot(columns, self.width)  # -1 (unknown or empty) -> all zeros
        out[BAG] = tf.minimum(tf.reduce_sum(hot, axis=1), 1.0)  # ragged rows -> dense
        return out
