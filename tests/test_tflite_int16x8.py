"""tflite_int16x8, the format added as one file: a user's model on real Fashion-MNIST rows,
exported with int8 weights and int16 activations, run by LiteRT, close to Keras."""
import json

import numpy as np

from conftest import fashion_arrays, run_cli


def test_int16x8_file_runs_in_litert_close_to_keras(tmp_path):
    import tf_keras as keras

    (x, y), (vx, vy) = fashion_arrays("train", 2000), fashion_arrays("t10k", 300)
    np.savez(tmp_path / "train.npz", images=x, labels=y)
    np.savez(tmp_path / "val.npz", images=vx, labels=vy)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)),
                              keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    model.save(tmp_path / "model.keras")
    recipe = tmp_path / "int16x8.yaml"
    recipe.write_text(f"""name: int16x8
model: {{type: keras, path: {tmp_path / 'model.keras'}}}
data: {{type: numpy, train: {tmp_path / 'train.npz'}, validation: {tmp_path / 'val.npz'},
       x: images, y: labels}}
stages: []
export: {{formats: [tflite_int8, tflite_int16x8], dir: {tmp_path / 'saved'},
         calibration_examples: 50}}
output: {{tensorboard: false}}
""")
    proc = run_cli(str(recipe), f"--output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "int16x8").iterdir()
    records = {r["artifact"]: r for r in json.loads((run_dir / "metrics.json").read_text())[
        "records"]}
    rec = records["tflite_int16x8"]
    assert rec["runtime"] == "litert" and rec["examples"] == 300
    assert rec["agreement"] >= 0.98, rec  # activations at 16 bits: nearer Keras than int8
    assert rec["max_abs_diff"] <= records["tflite_int8"]["max_abs_diff"], records
