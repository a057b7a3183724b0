"""BERT loading from an HF-format checkpoint written here: weights land where they belong,
the forward pass matches an independent NumPy implementation, errors name the file."""
import json
import math
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from tfdeploy.errors import CheckpointError
from tfdeploy.models.bert import BertTokenizer, from_pretrained

WORDS = ["the", "movie", "was", "great", "bad", "not", "a", "film", "##s", "good", "fun"]
CFG = dict(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
           num_attention_heads=4, intermediate_size=64, hidden_act="gelu",
           max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12)


def make_checkpoint(directory, prefix="bert.", cfg=CFG, seed=0):
    rng = np.random.default_rng(seed)
    h, i = cfg["hidden_size"], cfg["intermediate_size"]

    def w(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], h),
         "embeddings.position_embeddings.weight": w(cfg["max_position_embeddings"], h),
         "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], h),
         "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{n}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            t[p + name + ".weight"], t[p + name + ".bias"] = w(h, h), w(h)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(i, h), w(i)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(h, i), w(h)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"], t[p + name + ".bias"] = 1 + w(h), w(h)
    os.makedirs(directory, exist_ok=True)
    save_file({prefix + k: v for k, v in t.items()}, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**cfg, "model_type": "bert"}, f)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return t


def reference_forward(t, ids, mask, layers):
    """BERT as HF computes it, in NumPy (exact erf GELU)."""
    from math import erf

    gelu = np.vectorize(lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))))

    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * t[p + ".weight"] + t[p + ".bias"]

    def lin(x, p):
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    seq = ids.shape[1]
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][:seq]
         + t["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)])
    x = ln(x, "embeddings.LayerNorm")
    heads, hd = CFG["num_attention_heads"], CFG["hidden_size"] // CFG["num_attention_heads"]
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for n in layers:
        p = f"encoder.layer.{n}."
        split = lambda y: y.reshape(y.shape[0], seq, heads, hd).transpose(0, 2, 1, 3)  # noqa
        q, k, v = (split(lin(x, p + "attention.self." + m)) for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense")
        x = ln(x + h, p + "output.LayerNorm")
    return x


@pytest.fixture
def checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    return directory, make_checkpoint(directory)


def test_forward_matches_numpy_reference_with_padding(checkpoint):
    directory, tensors = checkpoint
    encoder, tokenizer = from_pretrained(directory)
    batch = tokenizer(["the movie was great", "not good", "a fun films the the bad movie"])
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][2].sum()  # padded rows
    ours = encoder(batch, training=False).numpy()
    ref = reference_forward(tensors, batch["input_ids"], batch["attention_mask"].astype(
        np.float32), layers=[0, 1])
    real = batch["attention_mask"].astype(bool)
    assert ours.shape == (3, batch["input_ids"].shape[1], CFG["hidden_size"])
    assert np.max(np.abs(ours[real] - ref[real])) < 1e-4


def test_layer_selection_takes_chosen_checkpoint_layers(checkpoint):
    directory, tensors = checkpoint
    encoder, tokenizer = from_pretrained(directory, layers=[1])
    kernel, bias = encoder.get_layer("layer_0_attention_query").get_weights()
    np.testing.assert_array_equal(kernel, tensors["encoder.layer.1.attention.self.query.weight"].T)
    batch = tokenizer(["the movie was great"])
    ref = reference_forward(tensors, batch["input_ids"], batch["attention_mask"].astype(
        np.float32), layers=[1])
    assert np.max(np.abs(encoder(batch).numpy() - ref)) < 1e-4
    with pytest.raises(CheckpointError, match=r"has 2 layers; cannot take layers \[5\]"):
        from_pretrained(directory, layers=[0, 5])


def test_tokenizer_round_trip(checkpoint):
    directory, _ = checkpoint
    tok = BertTokenizer(os.path.join(directory, "vocab.txt"), lowercase=True)
    batch = tok(["The movie was GREAT", "films"], max_length=16)
    ids = batch["input_ids"]
    words = ["[CLS]", "the", "movie", "was", "great", "[SEP]"]
    vocab = open(os.path.join(directory, "vocab.txt")).read().split("\n")
    assert [vocab[i] for i in ids[0][:6]] == words
    assert [vocab[i] for i in ids[1][:4]] == ["[CLS]", "film", "##s", "[SEP]"]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 1, 0, 0]
    assert tok.decode(ids[0][:6]) == "the movie was great"
    short = tok(["the movie was great fun"], max_length=4)["input_ids"][0]
    assert len(short) == 4 and vocab[short[-1]] == "[SEP]"  # truncation keeps [SEP]
    unknown = tok(["zebra"])["input_ids"][0]
    assert vocab[unknown[1]] == "[UNK]"


def test_missing_file_and_mismatch_errors(tmp_path, checkpoint):
    directory, _ = checkpoint
    with open(os.path.join(directory, "vocab.txt"), "a") as f:
        f.write("extra\n")
    with pytest.raises(CheckpointError, match="vocab.txt has 17 tokens but config.json says "
                                              "vocab_size 16"):
        from_pretrained(directory)
    os.remove(os.path.join(directory, "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        from_pretrained(directory)
    with pytest.raises(CheckpointError, match="neither a known name"):
        from_pretrained(str(tmp_path / "nowhere"))


def test_wrong_shapes_named(tmp_path):
    directory = str(tmp_path / "ckpt")
    make_checkpoint(directory)
    with open(os.path.join(directory, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 48
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="layer_0_intermediate expects shapes"):
        from_pretrained(directory)
