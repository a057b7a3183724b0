"""The report from a run's records, directly: the summary (recommendations, failed gates,
where the model came from), the stage table with each stage's Keras 3 copy, the artifacts."""
import numpy as np

from tfdeploy import report
from tfdeploy.evaluate import record

LABELS = np.array([0, 1, 1, 0, 1, 0, 1, 1])
RIGHT = np.eye(2)[LABELS] * 4.0            # every row right
ONE_WRONG = RIGHT.copy()
ONE_WRONG[0] = [0.0, 4.0]


def stage(name, traits, keras3):
    rec = record(name, "keras", "tf-keras", RIGHT, LABELS, 0.1, params=1000)
    rec.update(traits=traits, keras3=keras3)
    return rec


def artifact(name, runtime, logits, size, gate="passed", median=1.0):
    rec = record("qat", name, runtime, logits, LABELS, 0.1, reference=RIGHT,
                 size_bytes=size, gate=gate)
    rec["latency"] = {"batch_1": {"median_ms": median, "p90_ms": median * 1.1,
                                  "ratio": median}}
    return rec


def summary(model):
    records = [
        stage("train", {"sparsity": 0.0}, {"skipped": "layer 'x' (Mine) is a custom layer"}),
        stage("qat", {"sparsity": 0.5, "sparsity_pattern": "unstructured",
                      "quantization_aware": "prune_preserve"},
              {"path": "1-qat/model.keras", "max_difference": 2.5e-7, "rows": 64,
               "float_weights": True}),
        artifact("tflite_int8", "litert", RIGHT, 100_000, median=0.5),
        artifact("onnx_fp32", "onnxruntime", ONE_WRONG, 400_000, gate="dropped 0.125"),
    ]
    return {"recipe": "mine", "seconds": 12.0, "model": model,
            "strategy": {"strategy": "cpu", "replicas": 1}, "records": records}


def test_summary_stages_and_keras3_copies():
    md = report.markdown(summary({"source": "Keras 3", "rebuilt": True,
                                  "max_difference": 1.2e-7, "rows": 64}))
    assert "**Recommended, smallest:** `tflite_int8` of stage qat (litert)" in md
    assert "**Recommended, fastest (batch 1):** `tflite_int8`" in md
    assert "**Failed its gate:** `onnx_fp32` — dropped 0.125" in md
    assert "rebuilt in tf-keras; its outputs match the Keras 3 model's to 1.2e-07 on 64 " \
           "training rows" in md
    assert "- qat: `1-qat/model.keras` (float weights, fake quantization left out); its " \
           "outputs match the stage's float tf-keras model to 2.5e-07 on 64 validation " \
           "rows" in md
    assert "- train: none (layer 'x' (Mine) is a custom layer)" in md
    assert "| qat | 1.0000 |  | 50.0% (unstructured) |  | prune_preserve |  |" in md
    assert "| qat | onnx_fp32 | onnxruntime | 0.8750 |" in md


def test_a_keras3_model_on_the_post_training_path_says_why():
    md = report.markdown(summary({"source": "Keras 3", "rebuilt": False,
                                  "why": "layer 'x' (Mine) is a custom layer"}))
    assert "- Model: a Keras 3 file on the post-training path: layer 'x' (Mine)" in md
    plain = report.markdown(summary({"source": "tf-keras"}))
    assert "Model:" not in plain
