"""Computer vision end to end (#16): the MobileNet-style CNN on real Fashion-MNIST through
train -> prune (policy xnnpack) -> QAT and cluster -> CQAT, every export format; the
XNNPACK policy's structure check; training-time augmentation."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT, run_cli

FORMATS = ["savedmodel", "tflite_fp32", "tflite_fp32_sparse", "tflite_fp16",
           "tflite_dynamic_int8", "tflite_int8", "onnx_fp32", "onnx_int8", "onnx_static_int8"]


def recipe(name):
    return os.path.join(ROOT, "recipes", name)


def only_run(root, name):
    runs = [r for r in os.listdir(os.path.join(root, name)) if not r.startswith(".")]
    assert len(runs) == 1, runs
    return os.path.join(root, name, runs[0])


def tflite_ops(path):
    from ai_edge_litert.interpreter import Interpreter

    return [op["op_name"] for op in Interpreter(model_path=path)._get_ops_details()]


def float_ops(path):
    """Ops of the file that read a float tensor (QUANTIZE and the outputs' DEQUANTIZE
    aside)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return [op["op_name"] for op in interpreter._get_ops_details()
            if op["op_name"] not in ("QUANTIZE", "ARG_MAX")
            and any(dtypes.get(i) == np.float32 for i in op["inputs"][:1])]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    proc = run_cli(recipe("cnn_tiny.yaml"), "--output_dir", str(out), "--progress_every=0",
                   f"--set=export.dir={out / 'saved_models'}", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = only_run(str(out), "cnn_tiny")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return run_dir, json.load(f)["records"]


def by_stage(records, stage):
    return {r["artifact"]: r for r in records if r["stage"] == stage}


def test_tiny_cnn_every_format_every_stage(tiny_run):
    run_dir, records = tiny_run
    # a QAT model converts to int8 whatever the variant: its fp16 and dynamic-range files
    # would be the int8 file again, so they are made for the float stages only
    int8_again = {"tflite_fp16", "tflite_dynamic_int8"}
    for stage in ("train", "prune", "qat"):
        got, wanted = by_stage(records, stage), set(FORMATS)
        if stage == "qat":
            wanted -= int8_again
            assert set(got["keras"]["not_made"]) == int8_again, got["keras"]
            assert not int8_again & set(got)
        assert wanted <= set(got), (stage, sorted(got))
        for name in wanted:
            rec = got[name]
            assert rec["metrics"]["accuracy"] > 0.5, (stage, name, rec["metrics"])
            assert rec["size_bytes"] > 0 and rec["gzip_bytes"] > 0
            assert set(rec["latency"]) == {"batch_1", "batch_32"}, (stage, name)
    train = by_stage(records, "train")
    keras_acc = by_stage(records, "train")["keras"]["metrics"]["accuracy"]
    for name in ("savedmodel", "tflite_fp32", "tflite_fp32_sparse", "onnx_fp32"):
        assert train[name]["max_abs_diff"] < 1e-4, (name, train[name]["max_abs_diff"])
    for name in ("tflite_int8", "onnx_static_int8"):  # calibrated on training images
        assert abs(train[name]["metrics"]["accuracy"] - keras_acc) < 0.03, name
    with open(os.path.join(run_dir, "report.md")) as f:
        report = f.read()
    assert "- `tflite_fp16` after stage qat: a quantization-aware model" in report
    assert "Latency: 2 threads." in report and "tokens" not in report  # images, not text


def test_pruned_for_xnnpack_and_stored_sparse(tiny_run):
    run_dir, records = tiny_run
    report = by_stage(records, "prune")["keras"]["stage_report"]
    assert set(report["layers"]) == {"block0_pw", "block1_pw", "block2_pw"}  # 1x1 convs only
    assert min(report["layers"].values()) >= 0.745, report["layers"]
    prune = by_stage(records, "prune")
    dense, sparse = prune["tflite_fp32"], prune["tflite_fp32_sparse"]
    assert sparse["agreement"] == 1.0 and sparse["max_abs_diff"] < 1e-4
    assert sparse["size_bytes"] < dense["size_bytes"]
    ops = tflite_ops(os.path.join(run_dir, sparse["path"]))
    assert "DENSIFY" in ops  # the weights XNNPACK reads as static sparse
    assert "DENSIFY" not in tflite_ops(os.path.join(run_dir, dense["path"]))
    assert dense["weights_sparsity"] > 0.3  # all conv/FC weights; the 1x1 convs are 75%
    assert sparse["weights_sparsity"] == dense["weights_sparsity"]  # read from its sparse buffers


def test_qat_int8_folds_batch_norm_and_keeps_zeros(tiny_run):
    run_dir, records = tiny_run
    qat = by_stage(records, "qat")
    ops = tflite_ops(os.path.join(run_dir, qat["tflite_int8"]["path"]))
    # conv -> BN -> ReLU quantized as one unit: no float batch-norm math between convs
    assert "MUL" not in ops and "ADD" not in ops, ops
    assert ops.count("DEQUANTIZE") <= 2, ops  # the outputs only
    # the last ReLU6, the pool and the classifier stay int8 (pass-through layers get an
    # output quantizer), so no op of the network reads a float tensor
    assert float_ops(os.path.join(run_dir, qat["tflite_int8"]["path"])) == [], ops
    report = by_stage(records, "qat")["keras"]["stage_report"]
    assert report["scheme"] == "prune_preserve"


def optimized_ops(path, tmp_path):
    """The op types of an ONNX file after ONNX Runtime's graph optimizations."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_qat_onnx_runs_every_conv_int8_in_onnx_runtime(tiny_run, tmp_path):
    """With calibrated ranges the ReLU6 outputs' quantizers start at 0, so ORT drops each
    Clip before a QuantizeLinear and fuses every conv into QLinearConv (TFMOT's [-6, 6]
    start left them float, with a Transpose around each); the export drops the pairs that
    only re-quantized."""
    run_dir, records = tiny_run
    path = os.path.join(run_dir, by_stage(records, "qat")["onnx_static_int8"]["path"])
    ops = optimized_ops(path, tmp_path)
    assert ops.count("QLinearConv") == 7, ops  # the stem, 3 depthwise and 3 pointwise
    assert not {"Conv", "FusedConv", "Clip"} & set(ops), ops
    # no re-quantization between a conv and its ReLU6, nor after a padding, which ORT then
    # folds into the conv: left are the input's, the stem padding's (before the NHWC to
    # NCHW transpose) and the flatten's quantizers, and the stem's Pad
    assert ops.count("QuantizeLinear") == 3 and ops.count("Pad") == 1, ops


def test_int8_files_store_each_zero_point_vector_once(tiny_run):
    """Per-channel int8 needs an int64 zero point per scale; the export writes each
    distinct vector once. Packed plainly the file is larger, and reads the same."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    run_dir, records = tiny_run
    x = np.random.default_rng(0).random((2, 28, 28, 3), dtype=np.float32)
    for stage, name in (("train", "tflite_int8"), ("qat", "tflite_int8")):
        path = os.path.join(run_dir, by_stage(records, stage)[name]["path"])
        with open(path, "rb") as f:
            shipped = f.read()
        plain = flatbuffer_utils.convert_object_to_bytearray(
            flatbuffer_utils.convert_bytearray_to_object(shipped))
        assert len(shipped) < len(plain) - 100, (stage, name, len(shipped), len(plain))
        outs = []
        for data in (shipped, plain):
            runner = Interpreter(model_content=data).get_signature_runner()
            outs.append([next(iter(runner(**{runner.get_input_details().popitem()[0]:
                                                 x[i:i + 1]}).values())) for i in range(2)])
        assert np.array_equal(np.asarray(outs[0]), np.asarray(outs[1])), (stage, name)


def weight_scale_counts(tflite_bytes):
    """{tensor name: number of scales} of the int8 weights of a .tflite flatbuffer."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(tflite_bytes)
    int8 = 9  # TensorType.INT8
    return {t.name: len(t.quantization.scale) for t in model.subgraphs[0].tensors
            if t.type == int8 and model.buffers[t.buffer].data is not None}


def test_per_tensor_int8_keeps_one_scale_a_weight(tiny_run, tmp_path):
    """export.int8_granularity: per_tensor converts the calibrated int8 formats with one
    scale per weight tensor: a smaller file that still classifies like the per-channel one."""
    import onnx

    from tfdeploy.data.fashion_mnist import FashionMNIST
    from tfdeploy.export import onnx_static, runner_for, tflite

    run_dir, records = tiny_run
    task = FashionMNIST(FashionMNIST.Config(type="fashion_mnist", channels=3)).load()
    train = np.asarray(task.train.examples[:64], np.float32) / 255.0
    test = np.asarray(task.validation.examples[:500], np.float32) / 255.0

    def rows():
        return ({"image": x[None]} for x in train)

    saved = os.path.join(run_dir, "artifacts", "train", "savedmodel")
    files = {}
    for granularity in ("per_channel", "per_tensor"):
        data = tflite.convert(saved, "tflite_int8", rows, per_tensor=granularity == "per_tensor")
        files[granularity] = tmp_path / f"{granularity}.tflite"
        files[granularity].write_bytes(data)
        counts = weight_scale_counts(data)
        assert len(counts) == 8, counts  # stem, 3 depthwise, 3 pointwise, classifier
        assert (max(counts.values()) == 1) == (granularity == "per_tensor"), counts
    assert files["per_tensor"].stat().st_size < 0.95 * files["per_channel"].stat().st_size
    predicted = {g: runner_for(str(f))({"image": test}).argmax(-1) for g, f in files.items()}
    assert np.mean(predicted["per_tensor"] == predicted["per_channel"]) > 0.9

    prepared = os.path.join(run_dir, "artifacts", "train", ".convert", "onnx_prepared.onnx")
    out = onnx_static.quantize_static(prepared, str(tmp_path / "pt.onnx"), rows,
                                      per_channel=False)
    graph = onnx.load(out).graph
    inits = {i.name: i for i in graph.initializer}
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert len(weights) == 8, [n.name for n in weights]
    assert all(list(inits[n.input[1]].dims) in ([], [1]) for n in weights)


def test_qat_onnx_reads_int8_kernels(tiny_run):
    """The QAT model's ONNX QDQ graph: every Conv reads int8 kernels through
    DequantizeLinear (tf2onnx leaves them float)."""
    import onnx
    from onnx import numpy_helper

    run_dir, records = tiny_run
    qat = by_stage(records, "qat")
    graph = onnx.load(os.path.join(run_dir, qat["onnx_static_int8"]["path"])).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        kernel = producers[conv.input[1]]
        assert kernel.op_type == "DequantizeLinear", conv.name
        assert inits[kernel.input[0]].dtype == np.int8, conv.name
    # it was the QAT float graph itself (same bytes); kernels int8 now (tiny model:
    # scales and graph overhead weigh, so only "smaller")
    assert qat["onnx_static_int8"]["size_bytes"] < 0.8 * qat["onnx_fp32"]["size_bytes"]
    # quantized once after each ReLU6, as the TFLite converter does, not twice as the
    # Keras QAT model simulates: as close to Keras as the int8 TFLite file, same accuracy
    ort_int8, keras = qat["onnx_static_int8"], qat["keras"]["metrics"]["accuracy"]
    assert ort_int8["agreement"] >= min(0.95, qat["tflite_int8"]["agreement"] - 0.01)
    assert abs(ort_int8["metrics"]["accuracy"] - keras) <= 0.01


def test_tiny_cqat_keeps_16_values(tmp_path):
    proc = run_cli(recipe("cnn_tiny_cqat.yaml"), "--output_dir", str(tmp_path),
                   "--progress_every=0", f"--set=export.dir={tmp_path / 'saved_models'}",
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(only_run(str(tmp_path), "cnn_tiny_cqat"), "metrics.json")) as f:
        records = json.load(f)["records"]
    cluster = by_stage(records, "cluster")["keras"]["stage_report"]
    assert max(cluster["unique_weights"].values()) <= 16
    assert not any(name.endswith("_dw") for name in cluster["unique_weights"])
    qat = by_stage(records, "qat")["keras"]["stage_report"]
    assert qat["scheme"] == "cluster_preserve"
    assert 0 < qat["int8_max_values_per_channel"] <= 16, qat
    # cluster-preserving QAT with calibrated ranges: ORT fuses every conv into QLinearConv
    # (with TFMOT's [-6, 6] start, none; before qat's revision 1, all but the last: the
    # clustered model's reused pool and flatten layers got no output quantizer)
    ops = optimized_ops(os.path.join(only_run(str(tmp_path), "cnn_tiny_cqat"),
                                     by_stage(records, "qat")["onnx_static_int8"]["path"]),
                        tmp_path)
    assert ops.count("QLinearConv") == 7, ops
    assert not {"Conv", "FusedConv", "Clip"} & set(ops), ops


def test_xnnpack_policy_accepts_the_recipe_and_names_a_wrong_stem(tmp_path):
    ok = run_cli(recipe("cnn_tiny.yaml"), "--dry_run", "--output_dir", str(tmp_path))
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "block0_pw" in ok.stdout and "prune to 75%" in ok.stdout
    assert "xnnpack: depthwise convs run dense" in ok.stdout
    assert "FULLY_CONNECTED is not sparsified" in ok.stdout
    bad = run_cli(recipe("cnn_tiny.yaml"), "--dry_run", "--output_dir", str(tmp_path),
                  "--set", "model={type: cnn, input_shape: [28, 28, 3]}")
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
    text = bad.stdout + bad.stderr
    assert "conv_0" in text and "3x3 stride-2 Conv2D on 3 input channels" in text, text
    assert "stride 1" in text and "Traceback" not in text
    assert not os.listdir(tmp_path)


def test_structure_check_names_the_layer():
    import tf_keras as keras

    from tfdeploy.models.mobilenet import MobileNet
    from tfdeploy.stages.prune_xnnpack import structure_problems

    good = MobileNet(MobileNet.Config(type="mobilenet", width=0.25, depth=2), 10).build()
    assert structure_problems(good) == []
    x = inputs = keras.Input((28, 28, 3))
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="stem")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="wide")(x)  # 3x3 inside: refused
    x = keras.layers.GlobalAveragePooling2D(keepdims=False, name="gap")(x)
    problems = dict(structure_problems(keras.Model(inputs, keras.layers.Dense(2)(x))))
    assert set(problems) == {"wide", "gap"}, problems
    assert "keepdims" in problems["gap"]


def test_augmentation_is_seeded_and_only_in_training():
    from tfdeploy.data.augment import ImageAugmentation
    from tfdeploy.data.pipeline import DenseSplit
    from tfdeploy.data import Split
    from tfdeploy.models.mobilenet import MobileNet

    plugin = MobileNet(MobileNet.Config(type="mobilenet", input_shape=[8, 8, 3]), 2)
    images = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), np.uint8)
    split = Split(images, np.zeros(16, np.int32))
    augment = ImageAugmentation(random_flip=True, random_crop=2).augmentation()
    assert ImageAugmentation().augmentation() is None

    def first_batch(seed):
        ds = DenseSplit(plugin, split, augment).train_dataset(16, seed, shuffle=False)
        return next(iter(ds))[0]["image"].numpy()

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    plain = plugin.encode(images)["image"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, plain)
    ev = next(iter(DenseSplit(plugin, split, augment).eval_dataset(16)[0]))
    assert np.array_equal(ev["image"].numpy(), plain)


def test_batch_norm_folding_is_exact_and_keeps_zeros():
    import tf_keras as keras

    from tfdeploy.models.mobilenet import MobileNet
    from tfdeploy.stages.fold_bn import fold_batch_norms

    model = MobileNet(MobileNet.Config(type="mobilenet", width=0.25, depth=2), 10).build()
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.random(n) + 0.5, rng.random(n) - 0.5, rng.random(n) - 0.5,
                               rng.random(n) + 0.5])
        if layer.name == "block0_pw":
            kernel = layer.get_weights()[0]
            kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0
            layer.set_weights([kernel])
    folded, names = fold_batch_norms(model)
    assert len(names) == 5 and not any(isinstance(l, keras.layers.BatchNormalization)
                                       for l in folded.layers)
    x = rng.random((4, 28, 28, 3)).astype(np.float32)
    assert np.abs(model(x).numpy() - folded(x).numpy()).max() < 1e-4
    before = model.get_layer("block0_pw").get_weights()[0]
    after = folded.get_layer("block0_pw").get_weights()[0]
    assert np.array_equal(before == 0, after == 0)


def test_benchmark_by_validation_lengths_needs_token_sequences(tmp_path):
    bad = run_cli(recipe("cnn_tiny.yaml"), "--dry_run", "--output_dir", str(tmp_path),
                  "--set", "benchmark.enabled=true", "--set", "benchmark.lengths=validation")
    assert bad.returncode == 2, bad.stdout[-2000:] + bad.stderr[-2000:]
    text = bad.stdout + bad.stderr
    assert "benchmark.lengths" in text and "fixed-shape inputs" in text, text
    assert "Traceback" not in text and not os.listdir(tmp_path)
