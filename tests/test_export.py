"""Every export format on a small BERT (MiniLM vocabulary, hidden 32), evaluated in its own
runtime; parity failures are caught; a failing gate exits non-zero; report files parse."""
import json
import os
import shutil

import numpy as np
import pytest

from tfdeploy import evaluate
from tfdeploy.export import FORMATS, Artifact, litert, tflite, tflite_rewrites
from tfdeploy.models import checkpoints

from conftest import ROOT, run_cli
from test_bert import make_checkpoint

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, sst2_dir):
    tmp = tmp_path_factory.mktemp("export")
    vocab = os.path.join(checkpoints.resolve("minilm-l6"), "vocab.txt")
    cfg = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, hidden_act="gelu", max_position_embeddings=64,
               type_vocab_size=2, layer_norm_eps=1e-12)
    ckpt = tmp / "ckpt"
    make_checkpoint(str(ckpt), cfg=cfg)
    shutil.copy(vocab, ckpt / "vocab.txt")
    quantizer_recipe = tmp / "fc_int8.json"  # the tflite_recipe format's: dynamic int8 FCs
    quantizer_recipe.write_text(json.dumps([litert.rule("FULLY_CONNECTED", 8)]))
    recipe = tmp / "small.yaml"
    recipe.write_text(f"""base: {TINY}
name: small
model: {{checkpoint: {ckpt}, layers: null}}
data: {{max_train_examples: 300}}
evaluate: {{max_examples: 200}}
stages: [{{type: train, steps: 10, learning_rate: 1.0e-3}}]
export: {{formats: [{', '.join(FORMATS)}], dir: {tmp / 'saved_models'}, calibration_examples: 20,
         quantizer_recipe: {quantizer_recipe}}}
benchmark: {{enabled: true, batch_sizes: [1, 4], seq_length: 16, runs: 5, seconds: 0.2,
            warmup_runs: 2, warmup_seconds: 0.05}}
""")
    proc = run_cli(str(recipe), f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "small").iterdir()
    return recipe, run_dir, tmp


def test_every_format_evaluated_in_its_runtime(small_run):
    _, run_dir, _ = small_run
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    by_artifact = {r["artifact"]: r for r in records}
    assert set(by_artifact) == {"keras", *FORMATS}
    runtimes = {r["artifact"]: r["runtime"] for r in records}
    assert runtimes["savedmodel"] == "tf" and runtimes["tflite_int8"] == "litert"
    assert runtimes["onnx_int8"] == "onnxruntime"
    for name in ("savedmodel", "tflite_fp32", "onnx_fp32"):  # float artifacts agree fully
        assert by_artifact[name]["agreement"] == 1.0, name
        assert by_artifact[name]["max_abs_diff"] <= 1e-4, name
    for name in FORMATS:
        rec = by_artifact[name]
        assert rec["examples"] == 200 and 0 <= rec["metrics"]["accuracy"] <= 1
        assert rec["gzip_bytes"] > 0 and rec["latency"]["batch_1"]["median_ms"] > 0
        assert rec["latency"]["batch_4"]["runs"] >= 5
    assert by_artifact["savedmodel"]["latency"]["batch_1"]["ratio"] == 1.0
    # int8 artifacts are smaller than fp32 in the same format (embeddings included)
    assert by_artifact["tflite_dynamic_int8"]["size_bytes"] < 0.35 * by_artifact[
        "tflite_fp32"]["size_bytes"]
    assert by_artifact["onnx_int8"]["size_bytes"] < 0.35 * by_artifact["onnx_fp32"]["size_bytes"]


def test_onnx_graphs_use_fused_attention_and_gelu(small_run):
    """Our rewrite put ORT's Attention/Gelu ops in (2 layers), the
    quantizer made QAttention; parity of those files with Keras is asserted in the test above."""
    import onnx

    _, run_dir, _ = small_run
    ops = {}
    for name in ("onnx_fp32", "onnx_int8"):
        graph = onnx.load(str(run_dir / "artifacts" / f"small.{name}.onnx")).graph
        ops[name] = [n.op_type for n in graph.node]
    assert ops["onnx_fp32"].count("Attention") == 2 and "Softmax" not in ops["onnx_fp32"]
    assert ops["onnx_fp32"].count("Gelu") + ops["onnx_fp32"].count("BiasGelu") == 2
    assert "Erf" not in ops["onnx_fp32"]
    # residual Add + LayerNorm stay unfused: ORT's SkipLayerNormalization is slower on CPU
    assert "SkipLayerNormalization" not in ops["onnx_fp32"]
    assert ops["onnx_fp32"].count("LayerNormalization") == 5
    assert ops["onnx_int8"].count("QAttention") == 2


def test_report_files(small_run):
    _, run_dir, _ = small_run
    report = (run_dir / "report.md").read_text()
    for name in FORMATS:
        assert f"| train | {name} |" in report
    for png in ("accuracy_vs_latency.png", "accuracy_vs_size.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in report
    assert "**Recommended, fastest (batch 1):**" in report
    assert (run_dir / "train_train.png").exists()  # the stage's training curves
    page = (run_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') >= 3 and "<table>" in page


def test_parity_failure_detected(small_run):
    """Perturb one weight of the Keras model: the float artifact must now fail parity."""
    import tf_keras as keras
    import tfdeploy.models  # noqa: F401  (custom layers)

    _, run_dir, _ = small_run
    model = keras.models.load_model(str(run_dir / "0-train" / "model.h5"), compile=False)
    artifact = Artifact("tflite_fp32", str(run_dir / "artifacts" / "small.tflite_fp32.tflite"))
    run = artifact.runner()
    ids = np.array([[101, 2307, 3185, 102], [101, 2919, 102, 0]], np.int32)
    features = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32),
                "token_type_ids": np.zeros_like(ids)}
    ok = evaluate.parity(run(features), model(features).numpy())
    assert evaluate.check_float_parity({"artifact": "tflite_fp32", "runtime": "litert",
                                        "stage": "train", **ok}) is None
    layer = model.get_layer("classifier")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + np.array([0.5, -0.5], np.float32)])
    bad = evaluate.parity(run(features), model(features).numpy())
    message = evaluate.check_float_parity({"artifact": "tflite_fp32", "runtime": "litert",
                                           "stage": "train", **bad})
    assert message and "disagrees with the Keras model" in message


def test_gate_failure_exits_nonzero(small_run):
    recipe, _, tmp = small_run
    proc = run_cli(str(recipe), f"--output_dir={tmp / 'runs'}", "--resume",
                   "--set=export.formats=[tflite_fp32]", "--set=benchmark.enabled=false",
                   "--set=evaluate.float_tolerance=1e-12")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "tflite_fp32 (litert) disagrees with the Keras model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "stage train: unchanged" in proc.stdout


def test_accuracy_gate_message():
    rec = {"artifact": "tflite_int8", "runtime": "litert", "stage": "qat",
           "metrics": {"accuracy": 0.88}}
    assert evaluate.check_gate(rec, 0.90, 0.03) is None
    message = evaluate.check_gate(rec, 0.90, 0.01)
    assert "tflite_int8" in message and "0.0200 below the baseline 0.9000" in message
    assert evaluate.check_gate(rec, 0.90, 0.03, relative=True) is None  # 2.7% allowed
    assert evaluate.check_gate(rec, 0.90, 0.02, relative=True)  # 1.8% allowed


def test_bench_cli(small_run):
    import subprocess
    import sys
    _, run_dir, _ = small_run
    files = [str(run_dir / "artifacts" / f"small.{n}.tflite") for n in
             ("tflite_fp32", "tflite_dynamic_int8")]
    proc = subprocess.run([sys.executable, "-m", "tfdeploy.bench", *files, "--batch_sizes=1",
                           "--seq_length=16", "--runs=3", "--seconds=0.1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("small.")]
    assert len(lines) == 2 and lines[0].split()[4] == "1.00"  # ratio to the first artifact


def test_int8_fallback_keeps_sensitive_ops_float(small_run, tmp_path):
    """The fallback converts full int8 with LayerNorm/softmax/elementwise ops in float."""
    from tfdeploy import pipeline
    from tfdeploy.recipe import load_recipe
    recipe_path, run_dir, tmp = small_run
    recipe = load_recipe(str(recipe_path))
    context, _ = pipeline.prepare(recipe, pipeline.Options())
    saved = str(tmp / "saved_models" / "small" / "1")
    rep = context.train.representative(10, 0)
    out = str(tmp_path / "fallback.tflite")
    tflite.export(saved, "tflite_int8", out, rep, float_ops=tflite.FALLBACK_FLOAT_OPS)
    interp = tflite.interpreter(out)
    details = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    kinds = {}
    for op in interp._get_ops_details():
        kinds.setdefault(op["op_name"], set()).add(details[op["inputs"][0]])
    assert kinds["SOFTMAX"] == {np.float32} and kinds["RSQRT"] == {np.float32}
    assert np.int8 in kinds["FULLY_CONNECTED"]
    assert kinds["GELU"] == {np.float32}  # XNNPACK has no int8 GELU (float_islands)


def test_float_islands_move_int8_gelu_into_float_without_changing_outputs(small_run, tmp_path):
    """The converter's int8 GELU (a lookup table XNNPACK cannot run) becomes DEQUANTIZE ->
    float GELU -> QUANTIZE; the int8 outputs stay the same."""
    from tfdeploy import pipeline
    from tfdeploy.recipe import load_recipe
    recipe_path, _, tmp = small_run
    context, _ = pipeline.prepare(load_recipe(str(recipe_path)), pipeline.Options())
    saved = str(tmp / "saved_models" / "small" / "1")
    lut = tflite._convert(saved, "tflite_int8", context.train.representative(10, 0), False)
    paths = {"lut": tmp_path / "lut.tflite", "float": tmp_path / "float.tflite"}
    paths["lut"].write_bytes(lut)
    paths["float"].write_bytes(tflite_rewrites.float_islands(lut))
    gelu_inputs, outputs = {}, {}
    for key, path in paths.items():
        interp = tflite.interpreter(str(path))
        details = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
        gelu_inputs[key] = {details[op["inputs"][0]] for op in interp._get_ops_details()
                            if op["op_name"] == "GELU"}
        run = tflite.runner(str(path))
        outputs[key] = np.concatenate([run(f) for _, f in
                                       context.validation.numpy_batches(32)])
    assert gelu_inputs == {"lut": {np.int8}, "float": {np.float32}}
    # float GELU then rounding may differ from the table by an int8 step here and there
    diff = np.abs(outputs["lut"] - outputs["float"]).max()
    assert diff <= 0.05 * np.abs(outputs["lut"]).max(), diff
    assert np.mean(outputs["lut"].argmax(-1) == outputs["float"].argmax(-1)) >= 0.99


def test_int8_grid_weights_only_touches_weights_on_an_int8_grid(tmp_path):
    """A float FC whose weights are k * scale (what QAT's fake quant leaves) is stored int8
    and computes the same; one with arbitrary float weights is left alone."""
    import tensorflow as tf
    import tf_keras as keras

    rng = np.random.default_rng(0)
    scale = 0.01
    on_grid = rng.integers(-127, 128, (16, 8)).astype(np.float32) * scale
    on_grid[0, 0] = 127 * scale  # the grid's end, so max |w| / 127 recovers the scale
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="grid"),
                              keras.layers.Dense(4, name="free")])
    model.get_layer("grid").set_weights([on_grid, np.zeros(8, np.float32)])
    data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / "grid.tflite"
    path.write_bytes(tflite_rewrites.int8_grid_weights(data))
    weights = {v.shape: str(v.dtype) for _, v in tflite.weight_tensors(str(path))}
    assert weights == {(8, 16): "int8", (4, 8): "float32"}
    x = rng.normal(size=(1, 16)).astype(np.float32)
    interp = tflite.interpreter(str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    expected = model(x).numpy()
    # a hybrid FC quantizes its input on the fly, so close, not equal
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


def test_exporter_failure_is_one_line_and_keeps_finished_artifacts(small_run, tmp_path):
    """A missing optional package inside an exporter (here sympy, which ONNX Runtime's
    transformer optimizer imports; a stand-in package that refuses to import takes its
    place): one line naming the artifact and the cause, exit 4, no traceback; the artifacts
    finished before it are on disk and in metrics.json; nothing half-written; nothing
    published for TF Serving."""
    recipe, _, _ = small_run
    poison = tmp_path / "poison" / "sympy"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError(\"No module named 'sympy'\")\n")
    runs, exports = tmp_path / "runs", tmp_path / "saved_models"
    env = {"PYTHONPATH": os.pathsep.join([str(poison.parent), ROOT])}
    proc = run_cli(str(recipe), f"--output_dir={runs}", f"--set=export.dir={exports}",
                   "--set=export.formats=[savedmodel,tflite_fp32,onnx_fp32,onnx_int8]",
                   "--set=benchmark.enabled=false", env=env)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: export onnx_fp32: ")
    assert "sympy" in errors[0]
    (run_dir,) = (runs / "small").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    assert [r["artifact"] for r in records] == ["keras", "savedmodel", "tflite_fp32"]
    files = sorted(p.name for p in (run_dir / "artifacts").iterdir())
    assert files == ["savedmodel", "small.tflite_fp32.tflite"]
    assert not list(run_dir.rglob(".tmp*"))
    assert not exports.exists() or not any(p.name.isdigit() for p in
                                           (exports / "small").iterdir())
    # --verbosity 1 shows the cause's traceback for whoever debugs it
    proc = run_cli(str(recipe), f"--output_dir={runs}", f"--set=export.dir={exports}",
                   "--set=export.formats=[onnx_fp32]", "--resume", "--verbosity=1", env=env)
    assert proc.returncode == 4 and "Traceback" in proc.stderr


def test_stage_subset_converts_by_what_ran(small_run, tmp_path):
    """`--stages train` on a recipe whose later stage is qat: the model that reaches the
    exporter never had QAT, so tflite_int8 is calibrated full int8 (int8 activations into
    the matmuls), not a QAT conversion of a float model (which would leave them float)."""
    recipe, _, _ = small_run
    proc = run_cli(str(recipe), f"--output_dir={tmp_path / 'runs'}",
                   f"--set=export.dir={tmp_path / 'sm'}",
                   "--set=stages=[{type: train, steps: 4}, {type: qat, steps: 2}]",
                   "--stages=train", "--set=export.formats=[tflite_int8]",
                   "--set=benchmark.enabled=false", "--set=export.int8_fallback=off")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs" / "small").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    assert records[0]["traits"]["quantization_aware"] == ""
    interp = tflite.interpreter(str(run_dir / "artifacts" / "small.tflite_int8.tflite"))
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    fc_inputs = {dtypes[op["inputs"][0]] for op in interp._get_ops_details()
                 if op["op_name"] == "FULLY_CONNECTED"}
    assert np.int8 in fc_inputs


def qat_like_graph():
    """A QAT-style ONNX graph as tf2onnx writes one: a quantized input feeding a MatMul
    with a float kernel on an int8 grid, a bias, a ReLU and the output's quantizer, and an
    embedding Gather of a float table (a 1-wide bias table beside it)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    kernel = (rng.integers(-127, 128, (16, 8)) * 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(kernel, "kernel"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "bias"),
             numpy_helper.from_array(np.float32(0.05), "x_scale"),
             numpy_helper.from_array(np.uint8(128), "x_zero"),
             numpy_helper.from_array(np.float32(0.2), "y_scale"),
             numpy_helper.from_array(np.uint8(0), "y_zero"),
             numpy_helper.from_array(rng.normal(size=(50, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(size=(50, 1)).astype(np.float32) * 0.01,
                                     "bias_table")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
             helper.make_node("MatMul", ["xd", "kernel"], ["mm"], name="dense"),
             helper.make_node("Add", ["mm", "bias"], ["biased"]),
             helper.make_node("Relu", ["biased"], ["relu"]),
             helper.make_node("QuantizeLinear", ["relu", "y_scale", "y_zero"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero"], ["y"]),
             helper.make_node("Gather", ["table", "ids"], ["rows"], name="embedding"),
             helper.make_node("Gather", ["bias_table", "ids"], ["row_bias"], name="id_bias")]
    graph = helper.make_graph(
        nodes, "qat_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, width])
         for n, width in (("y", 8), ("rows", 8), ("row_bias", 1))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qat_onnx_matmul_kernels_and_tables_become_int8(tmp_path):
    import collections

    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from tfdeploy.export import qdq_weights

    model = qat_like_graph()
    feed = {"x": np.random.default_rng(1).uniform(-5, 5, (4, 16)).astype(np.float32),
            "ids": np.array([0, 7, 49, 7])}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    assert qdq_weights.int8_kernels(model) == 1
    assert qdq_weights.int8_tables(model) == 1  # the 1-wide bias table stays float
    onnx.checker.check_model(model)
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "kernel" not in arrays and "table" not in arrays  # the float copies are gone
    assert sorted(a.shape for a in arrays.values() if a.dtype == np.int8 and a.size > 1) \
        == [(16, 8), (50, 8)]
    assert arrays["bias_table"].dtype == np.float32
    path = tmp_path / "int8.onnx"
    path.write_bytes(model.SerializeToString())
    after = ort.InferenceSession(str(path)).run(None, feed)
    # the kernel was on the int8 grid: at most one output step apart (int32 accumulation
    # rounds at the step's edges), most outputs the same
    assert np.abs(after[0] - before[0]).max() <= 0.2 + 1e-5
    assert np.mean(np.isclose(after[0], before[0], atol=1e-5)) >= 0.75
    table = numpy_helper.to_array(qat_like_graph().graph.initializer[6])
    assert np.abs(after[1] - before[1]).max() <= np.abs(table).max() / 127 / 2 + 1e-6
    np.testing.assert_array_equal(after[2], before[2])
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx"))
                              .graph.node)
    assert ops["MatMul"] == 0 and ops["Gemm"] == 0  # ORT runs the matmul in int8


def test_tflite_runner_follows_each_batch_shape(tmp_path):
    """The TFLite runner resizes only when an input's shape changes: answers stay right as
    batch shapes alternate, and a missing input is an error, not a stale tensor."""
    import tensorflow as tf

    weights = np.arange(6, dtype=np.float32).reshape(3, 2)

    class Linear(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([None, 2], tf.float32, name="bias")])
        def serve(self, x, bias):
            return {"logits": tf.matmul(x, weights) + bias}

    module = Linear()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    path = tmp_path / "linear.tflite"
    path.write_bytes(tflite.convert(str(tmp_path / "sm"), "tflite_fp32"))
    run = tflite.runner(str(path), threads=1)
    rng = np.random.default_rng(0)
    for rows in (2, 2, 5, 1, 5, 5, 2):
        x, bias = rng.random((rows, 3), np.float32), rng.random((rows, 2), np.float32)
        np.testing.assert_allclose(run({"x": x, "bias": bias}), x @ weights + bias, rtol=1e-6)
    with pytest.raises(ValueError, match="the model takes"):
        run({"x": x})
