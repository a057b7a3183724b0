"""The BERT graph in tf-keras: real Keras layers for every weight, so TFMOT can wrap each
matrix; the weightless pieces are in :mod:`tfdeploy.models.bert.layers`."""
import tensorflow as tf
import tf_keras as keras

from tfdeploy.models.bert.config import _ACTIVATIONS, INPUT_NAMES, BertConfig
from tfdeploy.models.bert.layers import (AttentionMaskBias, ClsPooling, MaskedMeanPooling,
                                         PositionEmbedding, RowsToTokens, SelfAttention,
                                         TokensToRows)


def bert_inputs():
    return {name: keras.Input(shape=(None,), dtype=tf.int32, name=name) for name in INPUT_NAMES}


def encoder_graph(inputs, cfg: BertConfig):
    """Wire the encoder on ``inputs``; returns the last hidden state as token rows
    ``[batch * seq, hidden]`` (see tfdeploy.models.bert.layers for why rows)."""
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
