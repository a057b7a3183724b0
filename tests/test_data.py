"""Data: real SST-2 rows, users' CSV/TSV/JSONL, clear errors, length-bucketed batches."""
import json
import os

import numpy as np
import pytest

from tfdeploy import data
from tfdeploy.data.pipeline import EncodedSplit
from tfdeploy.errors import DataError
from tfdeploy.models.bert import BertTokenizer
from tfdeploy.recipe.validate import validate

from test_bert import make_checkpoint


def source(**cfg):
    """A data source that reads every row as training rows (no selection split) unless
    the test asks for one."""
    cfg.setdefault("selection_split", 0)
    config = validate(data.DATA.get(cfg["type"]).Config, cfg, {})
    return data.create(config, seed=0)


def test_selection_split_is_held_out_of_train_seeded(sst2_dir):
    full = source(type="sst2", dir=sst2_dir).load()
    task = source(type="sst2", dir=sst2_dir, selection_split=0.05).load()
    again = source(type="sst2", dir=sst2_dir, selection_split=0.05).load()
    assert len(task.selection) == round(67349 * 0.05)
    assert len(task.train) + len(task.selection) == len(full.train)
    assert task.validation.examples == full.validation.examples  # dev untouched
    # the selection rows are training rows, none of them also trained on: as multisets
    # (SST-2 repeats some phrases), train + selection is exactly the file's rows
    from collections import Counter
    assert Counter(task.train.examples) + Counter(task.selection.examples) == Counter(
        full.train.examples)
    assert task.selection.examples == again.selection.examples  # seeded
    other = data.create(validate(data.DATA.get("sst2").Config, {
        "type": "sst2", "dir": sst2_dir, "selection_split": 0.05}, {}), seed=1).load()
    assert other.selection.examples != task.selection.examples


def test_sst2_real_rows(sst2_dir):
    task = source(type="sst2", dir=sst2_dir).load()
    assert len(task.train) == 67349 and len(task.validation) == 872
    assert task.label_names == ["negative", "positive"]
    assert np.bincount(task.validation.labels).tolist() == [428, 444]
    assert task.train.examples[0] == "hide new secretions from the parental units"
    small = source(type="sst2", dir=sst2_dir, max_train_examples=100,
                   max_validation_examples=10).load()
    assert len(small.train) == 100 and len(small.validation) == 10
    assert set(small.train.examples) <= set(task.train.examples)


def test_sst2_missing_says_where(tmp_path):
    with pytest.raises(DataError, match=f"expected train.tsv and dev.tsv in {tmp_path}"):
        source(type="sst2", dir=str(tmp_path), download=False).load()


def test_sst2_rows_through_text_loader(tmp_path, sst2_dir):
    rows = open(os.path.join(sst2_dir, "dev.tsv")).read().splitlines()[:51]
    path = tmp_path / "dev.tsv"
    path.write_text("\n".join(rows) + "\n")
    task = source(type="text", train=str(path), text_column="sentence", labels=["0", "1"],
                  validation_split=0.2).load()
    assert len(task.train) + len(task.validation) == 50 and len(task.validation) == 10


def test_csv_and_jsonl_with_label_map(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text('text,label\n"good, really",pos\nbad,neg\nfine,pos\nawful,neg\n')
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": t, "y": y}) for t, y in
                               [("great", "pos"), ("poor", "neg")]))
    task = source(type="text", train=str(csv), validation=str(csv), labels=["neg", "pos"]).load()
    assert task.train.examples[0] == "good, really" and task.train.labels.tolist() == [1, 0, 1, 0]
    task = source(type="text", train=str(jsonl), validation=str(jsonl), text_column="review",
                  label_column="y").load()
    assert task.label_names == ["neg", "pos"] and task.validation.labels.tolist() == [1, 0]


@pytest.mark.parametrize("content,message", [
    ("sentence\tlabel\ngood film\t1\nbad\t0\textra\n", "train.tsv:3: expected 2 fields"),
    ("sentence\tlabel\ngood film\t1\nbad\tmaybe\n", "train.tsv:3: unknown label 'maybe'"),
    ("text\tlabel\ngood film\t1\n", "train.tsv:2: no column 'sentence'"),
    ("sentence\tlabel\n\t1\n", "train.tsv:2: empty or non-text 'sentence'"),
    ("", "train.tsv: is empty"),
])
def test_bad_rows_named(tmp_path, content, message):
    (tmp_path / "train.tsv").write_text(content)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(DataError, match=message):
        source(type="sst2", dir=str(tmp_path), download=False).load()


class Plugin:
    def __init__(self, tok):
        self.tok = tok

    def encode(self, texts, max_length):
        return {"input_ids": self.tok.encode_ragged(texts, max_length)}

    def features(self, ids):
        import tensorflow as tf
        return {"input_ids": ids, "attention_mask": tf.cast(ids != 0, tf.int32),
                "token_type_ids": tf.zeros_like(ids)}


def test_bucketed_batches(tmp_path):
    make_checkpoint(str(tmp_path))
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    texts = ["the"] * 20 + ["the movie was great " * 3] * 7 + ["a " * 30] * 5
    split = data.Split(texts, np.arange(len(texts)) % 2)
    enc = EncodedSplit(Plugin(tok), split, max_length=24, buckets=[4, 16, 64])
    assert enc.boundaries == [4, 16, 24]
    seen = 0
    for features, labels in enc.train_dataset(4, seed=0, repeat=False):
        ids = features["input_ids"].numpy()
        assert ids.shape[0] == 4 and ids.shape[1] in (4, 16, 24)
        assert (features["attention_mask"].numpy().sum(1) > 0).all()
        seen += 4
    assert seen == 20 + 4 + 4  # drop_remainder per bucket: 20/4, 7//4*4, 5//4*4
    ds, order = enc.eval_dataset(8)
    assert sorted(order.tolist()) == list(range(len(texts)))
    shapes = [b["input_ids"].shape[1] for b in ds]
    assert shapes == sorted(shapes) and set(shapes) == {4, 16, 24}


def test_fashion_mnist_idx():
    task = source(type="fashion_mnist").load()
    assert task.train.examples.shape == (60000, 28, 28) and len(task.validation) == 10000
    assert np.bincount(task.validation.labels).tolist() == [1000] * 10
    assert task.label_names[0] == "t-shirt"
    rgb = source(type="fashion_mnist", channels=3).load()
    assert rgb.validation.examples.shape == (10000, 28, 28, 3)
    assert (rgb.validation.examples == task.validation.examples[..., None]).all()


def test_one_row_data_is_refused(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("text,label\ngood,pos\n")
    with pytest.raises(DataError, match="1 training"):
        source(type="text", train=str(one), validation=str(one)).load()
