"""Keras 3 models, trained and saved in plain Keras 3 processes (no TF_USE_LEGACY_KERAS) on
real Fashion-MNIST and SST-2 rows, through train -> prune -> qat and every export; each
stage's Keras 3 copy loads in a plain Keras 3 process and matches its tf-keras model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import fashion_arrays, run_cli

FORMATS = "[savedmodel, tflite_fp32, tflite_int8, onnx_fp32, onnx_int8]"
STAGES = ("[{type: train, steps: 50, batch_size: 64, learning_rate: 5.0e-4}, "
          "{type: prune, steps: 200, frequency: 20, final_sparsity: 0.5, min_weights: 100, "
          "batch_size: 64, learning_rate: 1.0e-3}, "
          "{type: qat, steps: 60, batch_size: 64, learning_rate: 1.0e-4}]")

def trainer(body, inputs, name, epochs, rate, files=("train", "val")):
    """A plain Keras 3 script: load the .npz rows, build the model (``body`` defines
    ``model``), train it, print its validation accuracy and save ``<name>.keras``;
    ``inputs``: what the model reads from one split ``d``."""
    return f"""
import sys, numpy as np, keras
keras.utils.set_random_seed(0)
train = np.load(sys.argv[1] + "/{files[0]}.npz")
val = np.load(sys.argv[1] + "/{files[1]}.npz")
L = keras.layers
{body}
model.compile(keras.optimizers.Adam({rate}), "sparse_categorical_crossentropy",
              metrics=["accuracy"])
inputs = lambda d: {inputs}
model.fit(inputs(train), train["labels"], epochs={epochs}, batch_size=64, verbose=0)
print("accuracy", model.evaluate(inputs(val), val["labels"], verbose=0)[1])
model.save(sys.argv[1] + "/{name}.keras")
"""


CNN = trainer("""
image = keras.Input((28, 28, 1), name="image")
x = L.Conv2D(16, 3, padding="same", use_bias=False)(image)
x = L.BatchNormalization()(x)
x = L.Activation("relu")(x)
y = L.SeparableConv2D(16, 3, padding="same", activation="relu")(x)
x = L.Add()([x, y])
x = L.MaxPooling2D()(x)
x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
x = L.MaxPooling2D()(x)
x = L.Concatenate()([L.GlobalAveragePooling2D()(x), L.Flatten()(x)])
x = L.Dense(64, activation="gelu")(x)
model = keras.Model(image, L.Dense(10, activation="softmax")(x))
""", 'd["images"]', "cnn", epochs=4, rate=2e-3)

TWO_INPUTS = trainer("""
top, bottom = keras.Input((14, 28, 1), name="top"), keras.Input((14, 28, 1), name="bottom")
conv = L.Conv2D(16, 3, activation="relu")  # shared: one layer called on both halves
x = L.Concatenate()([L.Flatten()(L.MaxPooling2D()(conv(top))),
                     L.Flatten()(L.MaxPooling2D()(conv(bottom)))])
x = L.Dense(32, activation="relu")(x)
model = keras.Model({"top": top, "bottom": bottom}, L.Dense(10, activation="softmax")(x))
""", '{"top": d["upper"], "bottom": d["lower"]}', "two", epochs=2, rate=1e-3)

TEXT = trainer("""
ids = keras.Input((32,), dtype="int32", name="ids")
x = L.Embedding(int(sys.argv[2]), 32)(ids)
attended = L.MultiHeadAttention(num_heads=2, key_dim=16)(x, x)
x = L.LayerNormalization()(L.Add()([x, attended]))
x = L.GlobalAveragePooling1D()(x)
x = L.Dense(32, activation="gelu")(x)
model = keras.Model(ids, L.Dense(2, activation="softmax")(x))
""", 'd["ids"]', "text", epochs=2, rate=1e-3, files=("sst2_train", "sst2_val"))

CUSTOM = """
import sys, keras

@keras.saving.register_keras_serializable(package="mine")
class Doubling(keras.layers.Layer):
    def call(self, x):
        return x * 2.0

inputs = keras.Input((28, 28, 1), name="image")
x = Doubling(name="doubling")(keras.layers.Flatten()(inputs))
keras.Model(inputs, keras.layers.Dense(10)(x)).save(sys.argv[1] + "/custom.keras")
"""

LAMBDA = """
import sys, keras
inputs = keras.Input((28, 28, 1), name="image")
x = keras.layers.Lambda(lambda t: t * 2.0, name="twice")(keras.layers.Flatten()(inputs))
keras.Model(inputs, keras.layers.Dense(10)(x)).save(sys.argv[1] + "/lambda.keras")
"""

CUSTOM_CLASS = CUSTOM.split("inputs =")[0].replace("import sys, keras", "import keras")

RELOAD = """
import sys, numpy as np, keras
model = keras.saving.load_model(sys.argv[1])
rows = dict(np.load(sys.argv[2]))
np.save(sys.argv[3], np.asarray(model(rows if len(rows) > 1 else next(iter(rows.values())))))
"""


def keras3(script, *args):
    """Run ``script`` in a plain Keras 3 process (TF_USE_LEGACY_KERAS unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """Real Fashion-MNIST rows as a user keeps them: .npz arrays, whole and in halves."""
    tmp = tmp_path_factory.mktemp("keras3")
    for name, (x, y) in (("train", fashion_arrays("train", 3000)),
                         ("val", fashion_arrays("t10k", 500))):
        np.savez(tmp / f"{name}.npz", images=x, labels=y, upper=x[:, :14], lower=x[:, 14:])
    return tmp


def recipe(tmp, model, stages, formats=FORMATS, name="k3", data="x: images"):
    path = tmp / f"{name}.yaml"
    path.write_text(f"""name: {name}
model: {{type: keras, path: {model}}}
data: {{type: numpy, train: {tmp / 'train.npz'}, validation: {tmp / 'val.npz'},
       {data}, y: labels}}
stages: {stages}
export: {{formats: {formats}, dir: {tmp / 'saved_models'}, calibration_examples: 50}}
benchmark: {{batch_sizes: [1], runs: 10, seconds: 0.2, warmup_runs: 3, warmup_seconds: 0.05,
            settle: 0.05}}
output: {{tensorboard: false}}
""")
    return str(path)


def finished_run(tmp, name, proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / name).iterdir()
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def check_run(tmp, name, proc, trained, rows):
    """Every artifact within 2 points of the user's Keras 3 model; the bridge within 1e-5;
    the pruned stage's Keras 3 file, loaded in a plain Keras 3 process, gives its tf-keras
    model's outputs."""
    from tfdeploy import checkpoint
    import tensorflow as tf

    run_dir, summary = finished_run(tmp, name, proc)
    assert summary["model"]["source"] == "Keras 3" and summary["model"]["rebuilt"]
    assert summary["model"]["max_difference"] <= 1e-5, summary["model"]
    records = summary["records"]
    stages = [r for r in records if r["artifact"] == "keras"]
    assert [r["stage"] for r in stages] == ["train", "prune", "qat"]
    assert stages[1]["traits"]["sparsity"] >= 0.45
    for rec in stages:
        assert rec["keras3"]["max_difference"] <= 1e-5, rec["keras3"]
    artifacts = [r for r in records if r["artifact"] != "keras"]
    assert {r["artifact"] for r in artifacts} == set(FORMATS.strip("[]").split(", "))
    for rec in artifacts:
        assert rec["metrics"]["accuracy"] >= trained - 0.02, (rec, trained)
    np.savez(tmp / "rows.npz", **rows)
    keras3(RELOAD, run_dir / "1-prune" / "model.keras", tmp / "rows.npz", tmp / "out.npy")
    pruned = checkpoint.load(str(run_dir / "1-prune"), tf.distribute.get_strategy())
    expected = pruned(rows if len(rows) > 1 else next(iter(rows.values())),
                      training=False).numpy()
    assert np.abs(np.load(tmp / "out.npy") - expected).max() <= 1e-5
    assert "Keras 3" in (run_dir / "report.md").read_text()


def test_keras3_cnn_through_every_stage_and_export(fashion):
    trained = float(keras3(CNN, fashion).split("accuracy")[-1])
    proc = run_cli(recipe(fashion, fashion / "cnn.keras", STAGES),
                   f"--output_dir={fashion / 'runs'}")
    rows = {"image": np.load(fashion / "val.npz")["images"][:32]}
    check_run(fashion, "k3", proc, trained, rows)


def test_keras3_two_input_model(fashion):
    trained = float(keras3(TWO_INPUTS, fashion).split("accuracy")[-1])
    model = fashion / "two.keras"
    mapped = recipe(fashion, f"{model}, inputs: {{top: upper, bottom: lower}}", STAGES,
                    name="k3two", data="columns: [upper, lower]")
    proc = run_cli(mapped, f"--output_dir={fashion / 'runs'}")
    val = np.load(fashion / "val.npz")
    check_run(fashion, "k3two", proc, trained,
              {"top": val["upper"][:32], "bottom": val["lower"][:32]})


def tokenized_sst2(sst2_dir, folder, rows=8000, length=32, vocab_size=8000):
    """SST-2 rows as token ids in .npz files: a word vocabulary of the training rows (0 pads,
    1 is an unknown word), each sentence cut or padded to ``length``."""
    import collections
    import csv

    def read(name):
        with open(os.path.join(sst2_dir, name), encoding="utf-8") as f:
            return [(r["sentence"].split(), int(r["label"]))
                    for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]

    train, val = read("train.tsv")[:rows], read("dev.tsv")
    counts = collections.Counter(w for words, _ in train for w in words)
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(vocab_size - 2))}

    def arrays(split, name):
        ids = np.zeros((len(split), length), np.int32)
        for row, (words, _) in enumerate(split):
            tokens = [vocab.get(w, 1) for w in words][:length]
            ids[row, :len(tokens)] = tokens
        np.savez(folder / name, ids=ids, labels=np.array([y for _, y in split], np.int64))

    arrays(train, "sst2_train.npz")
    arrays(val, "sst2_val.npz")
    return vocab_size


def test_keras3_text_classifier(fashion, sst2_dir):
    vocab_size = tokenized_sst2(sst2_dir, fashion)
    trained = float(keras3(TEXT, fashion, vocab_size).split("accuracy")[-1])
    path = recipe(fashion, fashion / "text.keras", STAGES, name="k3text", data="x: ids")
    path_text = open(path).read().replace("train.npz", "sst2_train.npz").replace(
        "val.npz", "sst2_val.npz")
    open(path, "w").write(path_text)
    proc = run_cli(path, f"--output_dir={fashion / 'runs'}")
    check_run(fashion, "k3text", proc, trained,
              {"ids": np.load(fashion / "sst2_val.npz")["ids"][:32]})


def test_keras3_custom_layer_is_named_and_takes_the_post_training_path(fashion, tmp_path):
    keras3(CUSTOM, tmp_path)
    model = f"{tmp_path / 'custom.keras'}, custom_objects: [keras3_custom.Doubling]"
    (tmp_path / "keras3_custom.py").write_text(CUSTOM_CLASS)
    env = {"PYTHONPATH": str(tmp_path)}
    refused = run_cli(recipe(fashion, model, "[{type: prune, steps: 5}]", name="k3custom"),
                      "--dry_run", env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    (line,) = [l for l in refused.stderr.splitlines() if l.startswith("error:")]
    assert "'doubling' (Doubling)" in line and "custom layer" in line, line
    assert "post-training" in line and "inbound_nodes" not in refused.stderr
    proc = run_cli(recipe(fashion, model, "[]", "[tflite_fp32, onnx_fp32]", name="k3ptq"),
                   f"--output_dir={tmp_path / 'runs'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "k3ptq").iterdir()
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["model"]["rebuilt"] is False
    assert [r["artifact"] for r in summary["records"]] == ["keras", "tflite_fp32", "onnx_fp32"]
    assert all(r["agreement"] == 1.0 for r in summary["records"][1:])


def test_keras3_custom_layer_without_its_class_is_one_line(fashion, tmp_path):
    keras3(CUSTOM, tmp_path)
    proc = run_cli(recipe(fashion, tmp_path / "custom.keras", "[]", name="k3nocls"),
                   "--dry_run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "custom.keras" in line and "custom_objects" in line and "{" not in line, line


def test_broken_keras3_files_are_one_line(fashion, tmp_path):
    keras3(CUSTOM, tmp_path)
    good = (tmp_path / "custom.keras").read_bytes()
    cases = {"truncated.keras": good[:len(good) // 2], "text.keras": b"not a zip",
             "mismatch.keras": mismatched(tmp_path / "custom.keras")}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        line = refusal(recipe(fashion, tmp_path / name, "[]", name="broken"))
        assert name in line and ("archive" in line or "weights" in line), line
    keras3(LAMBDA, tmp_path)
    line = refusal(recipe(fashion, tmp_path / "lambda.keras", "[]", name="lam"))
    assert "'twice' (Lambda)" in line and "unsafe" in line, line
    np.savez(tmp_path / "train.npz", images=np.zeros((4, 28, 28, 1), np.float32),
             labels=np.array([0, 1, 0, 1]))  # two classes; the model gives ten values
    np.savez(tmp_path / "val.npz", images=np.zeros((2, 28, 28, 1), np.float32),
             labels=np.array([0, 1]))
    model = f"{tmp_path / 'custom.keras'}, custom_objects: [keras3_custom.Doubling]"
    line = refusal(recipe(tmp_path, model, "[]", name="width"),
                   env={"PYTHONPATH": str(tmp_path)}, module=True)
    assert "outputs 10 values per example but the data has 2 classes" in line, line


def refusal(path, env=None, module=False):
    """The one error line of a --dry_run that must refuse (exit 2, no traceback)."""
    if module:
        (Path(path).parent / "keras3_custom.py").write_text(CUSTOM_CLASS)
    proc = run_cli(path, "--dry_run", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert "{" not in line and len(line) < 600, line
    return line


def mismatched(path):
    """The archive with its Dense layer made wider in config.json than its stored weights
    (and no custom layer): a file whose weights do not match its config."""
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                layers = config["config"]["layers"]
                config["config"]["layers"] = [l for l in layers if l["class_name"] != "Doubling"]
                for layer in config["config"]["layers"]:
                    if layer["class_name"] == "Dense":
                        layer["config"]["units"] = 12
                        layer["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = \
                            "flatten"
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return out.getvalue()


def test_keras3_model_object_through_the_python_api(fashion, tmp_path):
    """A Keras 3 model object (this process: ``import keras`` is Keras 3 beside tf-keras)
    handed to tfdeploy.api.run: trained, exported and evaluated as from a file."""
    import keras

    from tfdeploy import api

    train = np.load(fashion / "train.npz")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1), name="image"), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")], name="mine")
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train["images"], train["labels"], epochs=1, batch_size=64, verbose=0)
    path = recipe(fashion, "unused.keras", "[{type: train, steps: 10, batch_size: 64}]",
                  "[tflite_fp32]", name="k3api")
    summary = api.run(path, model=model, output_dir=str(tmp_path / "runs"))
    assert summary["model"]["rebuilt"] and summary["model"]["max_difference"] <= 1e-5
    records = summary["records"]
    assert [r["artifact"] for r in records] == ["keras", "tflite_fp32"]
    assert records[1]["agreement"] >= 0.99 and records[1]["metrics"]["accuracy"] > 0.6
