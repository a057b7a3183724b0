"""A user's own plain tf-keras model, trained and saved by this test on real Fashion-MNIST
rows, goes through prune -> qat and every export with no tfdeploy model code written for
it; stored code (Lambda layers) is refused unless the recipe says unsafe."""
import json
import os

import numpy as np
import pytest

from conftest import fashion_arrays, run_cli

FORMATS = "[savedmodel, tflite_fp32, tflite_dynamic_int8, tflite_int8, onnx_fp32, onnx_int8]"


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user brings: a trained model (.keras and SavedModel) and .npz arrays."""
    import tf_keras as keras

    tmp = tmp_path_factory.mktemp("own_model")
    (x, y), (vx, vy) = fashion_arrays("train", 3000), fashion_arrays("t10k", 500)
    np.savez(tmp / "train.npz", images=x, labels=y)
    np.savez(tmp / "val.npz", images=vx, labels=vy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax")])  # a user's usual softmax head
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    accuracy = model.evaluate(vx, vy, verbose=0)[1]
    model.save(tmp / "model.keras")
    model.save(tmp / "saved_model")  # tf-keras SavedModel directory
    return tmp, accuracy


def recipe(tmp, model_path, stages, formats=FORMATS, name="mine", data=None):
    path, data = tmp / f"{name}.yaml", data or tmp
    path.write_text(f"""name: {name}
model: {{type: keras, path: {model_path}}}
data: {{type: numpy, train: {data / 'train.npz'}, validation: {data / 'val.npz'},
       x: images, y: labels}}
stages: {stages}
export: {{formats: {formats}, dir: {tmp / 'saved_models'}, calibration_examples: 50}}
output: {{tensorboard: false}}
""")
    return str(path)


def test_keras_file_through_prune_qat_and_every_export(user_files):
    tmp, trained = user_files
    stages = ("[{type: prune, steps: 30, frequency: 5, final_sparsity: 0.5, min_weights: 100, "
              "batch_size: 64, learning_rate: 1.0e-3}, "
              "{type: qat, steps: 20, batch_size: 64, learning_rate: 1.0e-4}]")
    # a QAT model's dynamic-range file would be its int8 file again: refused, not made
    formats = FORMATS.replace("tflite_dynamic_int8, ", "")
    proc = run_cli(recipe(tmp, tmp / "model.keras", stages, formats),
                   f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "mine").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    by_artifact = {r["artifact"]: r for r in records if r["artifact"] != "keras"}
    assert set(by_artifact) == {"savedmodel", "tflite_fp32", "tflite_int8", "onnx_fp32",
                                "onnx_int8"}
    keras_records = [r for r in records if r["artifact"] == "keras"]
    assert [r["stage"] for r in keras_records] == ["prune", "qat"]
    assert keras_records[0]["traits"]["sparsity"] >= 0.45
    assert keras_records[1]["traits"]["quantization_aware"] == "prune_preserve"
    for rec in by_artifact.values():  # every artifact in its own runtime, close to Keras
        assert rec["examples"] == 500 and rec["agreement"] >= 0.97, rec
        assert rec["metrics"]["accuracy"] > trained - 0.05, (rec, trained)
    assert by_artifact["tflite_int8"]["runtime"] == "litert"
    assert by_artifact["onnx_fp32"]["runtime"] == "onnxruntime"
    assert (tmp / "saved_models" / "mine" / "1" / "saved_model.pb").exists()


def test_keras_savedmodel_directory(user_files):
    tmp, trained = user_files
    proc = run_cli(recipe(tmp, tmp / "saved_model",
                          "[{type: train, steps: 10, batch_size: 64, learning_rate: 1.0e-4}]",
                          "[tflite_int8, onnx_fp32]", name="mine_sm"),
                   f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "mine_sm").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    assert [r["artifact"] for r in records] == ["keras", "tflite_int8", "onnx_fp32"]
    assert records[2]["agreement"] == 1.0


def test_lambda_layers_are_refused_without_running_them(user_files, tmp_path):
    import tf_keras as keras

    tmp, _ = user_files
    marker = str(tmp_path / "ran")

    def leave_marker(t):  # stored as bytecode in the file; leaves a marker when it runs
        open(marker, "a").close()
        return t

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Lambda(leave_marker), keras.layers.Dense(10)])
    model.save(tmp_path / "lambda.h5")
    model.save(tmp_path / "lambda.keras")
    os.remove(marker)  # building the model above ran it once
    for suffix in ("h5", "keras"):
        proc = run_cli(recipe(tmp_path, tmp_path / f"lambda.{suffix}", "[]", "[savedmodel]",
                              name=f"lam_{suffix}", data=tmp), "--dry_run")
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        assert "Lambda" in proc.stderr and "unsafe" in proc.stderr, proc.stderr[-1000:]
    assert not os.path.exists(marker)


KERAS3_EXPORT = """
import sys, numpy as np, keras
keras.utils.set_random_seed(0)
train, val = np.load(sys.argv[1] + "/train.npz"), np.load(sys.argv[1] + "/val.npz")
model = keras.Sequential([keras.Input((28, 28, 1), name="pixels"), keras.layers.Flatten(),
                          keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train["images"], train["labels"], epochs=2, batch_size=64, verbose=0)
accuracy = model.evaluate(val["images"], val["labels"], verbose=0)[1]
model.export(sys.argv[1] + "/keras3_export")
print("accuracy", accuracy)
"""


def test_keras3_export_takes_the_post_training_path(user_files):
    """A SavedModel that is not a tf-keras model (Keras 3's model.export(), trained here
    with Keras 3 in its own process): every export format, each evaluated; its softmax
    output is read as probabilities; training stages are refused before any work."""
    import subprocess
    import sys

    tmp, _ = user_files
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", KERAS3_EXPORT, str(tmp)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keras3_accuracy = float(proc.stdout.split("accuracy")[-1])
    proc = run_cli(recipe(tmp, tmp / "keras3_export", "[]", name="k3"),
                   f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "k3").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    assert [r["artifact"] for r in records] == [
        "keras", "savedmodel", "tflite_fp32", "tflite_dynamic_int8", "tflite_int8",
        "onnx_fp32", "onnx_int8"]
    assert abs(records[0]["metrics"]["accuracy"] - keras3_accuracy) < 1e-6
    for rec in records[1:]:
        assert rec["agreement"] >= 0.97, rec
        assert rec["metrics"]["accuracy"] > keras3_accuracy - 0.03, rec
    served = subprocess.run(
        [sys.executable, "-c", "import sys, numpy as np, tensorflow as tf; "
         "f = tf.saved_model.load(sys.argv[1]).signatures['serving_default']; "
         "x = np.load(sys.argv[2])['images'][:8]; "
         "print(np.abs(f(pixels=tf.constant(x))['probabilities'].numpy().sum(-1) - 1).max())",
         str(tmp / "saved_models" / "k3" / "1"), str(tmp / "val.npz")],
        capture_output=True, text=True, timeout=300)
    assert float(served.stdout.strip().splitlines()[-1]) < 1e-5, served.stderr[-2000:]
    refused = run_cli(recipe(tmp, tmp / "keras3_export",
                             "[{type: train, steps: 5}]", name="k3_train"), "--dry_run")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "graph without Keras layers" in refused.stderr, refused.stderr[-1000:]


def test_layers_tfmot_cannot_wrap_are_named_before_work(user_files, tmp_path):
    """A TF op called on Keras tensors (a TFOpLambda) feeding a Dense: QAT would wrap it and
    cannot; --dry_run names it, a run refuses before writing anything, post-training
    exports still work."""
    import tensorflow as tf
    import tf_keras as keras

    tmp, _ = user_files
    inputs = keras.Input((28, 28, 1))
    hidden = tf.nn.relu(keras.layers.Dense(32)(keras.layers.Flatten()(inputs))) * 2.0
    keras.Model(inputs, keras.layers.Dense(10)(hidden)).save(tmp_path / "oplambda.keras")
    qat = recipe(tmp_path, tmp_path / "oplambda.keras", "[{type: qat, steps: 5}]",
                 "[tflite_int8]", name="opl", data=tmp)
    for extra in ("--dry_run", f"--output_dir={tmp_path / 'runs'}"):
        proc = run_cli(qat, extra)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "cannot wrap" in proc.stderr and "TFOpLambda" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()
    ptq = recipe(tmp_path, tmp_path / "oplambda.keras", "[]", "[tflite_int8, onnx_fp32]",
                 name="opl_ptq", data=tmp)
    proc = run_cli(ptq, f"--output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
