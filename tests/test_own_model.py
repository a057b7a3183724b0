"""A user's own plain tf-keras model, trained and saved by this test on real Fashion-MNIST
rows, goes through prune -> qat and every export with no tfdeploy model code written for
it; stored code (Lambda layers) is refused unless the recipe says unsafe."""
import json
import os

import numpy as np
import pytest

from tfdeploy.data.fashion_mnist import FashionMNIST, read_idx

from conftest import run_cli

FORMATS = "[savedmodel, tflite_fp32, tflite_dynamic_int8, tflite_int8, onnx_fp32, onnx_int8]"


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What a user brings: a trained model (.keras and SavedModel) and .npz arrays."""
    import tf_keras as keras

    tmp = tmp_path_factory.mktemp("own_model")
    folder = FashionMNIST(FashionMNIST.Config(type="fashion_mnist")).find()

    def arrays(prefix, count):
        x = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"))[:count]
        y = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"))[:count]
        return (x[..., None] / 255.0).astype(np.float32), y.astype(np.int64)

    (x, y), (vx, vy) = arrays("train", 3000), arrays("t10k", 500)
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
    proc = run_cli(recipe(tmp, tmp / "model.keras", stages), f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "mine").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    by_artifact = {r["artifact"]: r for r in records if r["artifact"] != "keras"}
    assert set(by_artifact) == {"savedmodel", "tflite_fp32", "tflite_dynamic_int8",
                                "tflite_int8", "onnx_fp32", "onnx_int8"}
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
