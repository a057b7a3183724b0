"""The few BERT pieces Keras has no layer for. None of them holds a matmul weight, so TFMOT
sees every prunable/quantizable matrix as a plain ``Dense`` or ``Embedding``.

Between the embeddings and the output the encoder works on token *rows*, ``[batch * seq,
hidden]``: every Dense is then a 2-D matmul with its bias fused, which is what the TFLite
converter needs to emit an int8 FULLY_CONNECTED from QAT ranges (on 3-D inputs Keras
computes ``tensordot`` + a separate bias add, and the matmul stays float).
"""
import math

import tensorflow as tf
import tf_keras as keras

register = keras.utils.register_keras_serializable(package="tfdeploy")


@register
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute positions, broadcast to the shape of the word embeddings it gets."""

    def __init__(self, max_positions, hidden_size, **kwargs):
        super().__init__(**kwargs)
        self.max_positions, self.hidden_size = max_positions, hidden_size

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            "embeddings", shape=(self.max_positions, self.hidden_size),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02))
        super().build(input_shape)

    def call(self, word_embeddings):
        seq = tf.shape(word_embeddings)[1]
        positions = tf.cast(self.embeddings[:seq], word_embeddings.dtype)
        return tf.broadcast_to(tf.expand_dims(positions, 0), tf.shape(word_embeddings))

    def get_config(self):
        return {**super().get_config(), "max_positions": self.max_positions,
                "hidden_size": self.hidden_size}


@register
class AttentionMaskBias(keras.layers.Layer):
    """[batch, seq] 0/1 mask -> [batch, 1, 1, seq] additive bias (0 keep, -10000 drop)."""

    def call(self, mask):
        mask = tf.cast(mask, self.compute_dtype)
        # expand_dims, not [:, None, None, :]: TFLite has no builtin for new-axis slicing.
        return tf.expand_dims(tf.expand_dims((1.0 - mask) * -10000.0, 1), 1)


@register
class TokensToRows(keras.layers.Layer):
    """[batch, seq, hidden] -> [batch * seq, hidden]."""

    def call(self, x):
        return tf.reshape(x, [-1, x.shape[-1]])


@register
class RowsToTokens(keras.layers.Layer):
    """[batch * seq, hidden] -> [batch, seq, hidden], shaped like the [batch, seq] mask."""

    def call(self, inputs):
        rows, mask = inputs
        return tf.reshape(rows, [tf.shape(mask)[0], tf.shape(mask)[1], rows.shape[-1]])


@register
class SelfAttention(keras.layers.Layer):
    """Scaled dot-product attention over projected Q, K, V token rows (heads split here);
    the mask bias [batch, 1, 1, seq] gives the batch and sequence sizes."""

    # V meets the float softmax probabilities in a matmul: QAT keeps V's producer output
    # float, so the int8 file runs that matmul in float (XNNPACK has no int8 BATCH_MATMUL).
    float_inputs = (2,)

    def __init__(self, num_heads, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.dropout = num_heads, dropout
        self.drop = keras.layers.Dropout(dropout)

    def call(self, inputs, training=None):
        q, k, v, bias = inputs
        batch, seq = tf.shape(bias)[0], tf.shape(bias)[3]
        head_dim = q.shape[-1] // self.num_heads

        def heads(x):
            x = tf.reshape(x, [batch, seq, self.num_heads, head_dim])
            return tf.transpose(x, [0, 2, 1, 3])

        scores = tf.matmul(heads(q), heads(k), transpose_b=True)
        scores = scores / math.sqrt(head_dim) + tf.cast(bias, scores.dtype)
        probs = self.drop(tf.nn.softmax(scores, axis=-1), training=training)
        context = tf.transpose(tf.matmul(probs, heads(v)), [0, 2, 1, 3])
        return tf.reshape(context, [-1, q.shape[-1]])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@register
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the hidden states over real (unmasked) tokens, as sentence-transformers does."""

    def call(self, inputs):
        rows, mask = inputs
        hidden = tf.reshape(rows, [tf.shape(mask)[0], tf.shape(mask)[1], rows.shape[-1]])
        mask = tf.expand_dims(tf.cast(mask, hidden.dtype), -1)
        return tf.reduce_sum(hidden * mask, axis=1) / tf.maximum(
            tf.reduce_sum(mask, axis=1), 1e-9)


@register
class ClsPooling(keras.layers.Layer):
    """The hidden state of the first ([CLS]) token."""

    def call(self, inputs):
        rows, mask = inputs
        hidden = tf.reshape(rows, [tf.shape(mask)[0], tf.shape(mask)[1], rows.shape[-1]])
        return hidden[:, 0]


def custom_objects():
    """By plain class name too: TFMOT wrappers deserialize inner layers without package."""
    return {cls.__name__: cls for cls in (PositionEmbedding, AttentionMaskBias, TokensToRows,
                                          RowsToTokens, SelfAttention, MaskedMeanPooling,
                                          ClsPooling)}
