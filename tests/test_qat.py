"""qat on a small BERT: matmuls int8, LayerNorm/softmax/GELU float, a valid int8 TFLite;
chained prune -> qat keeps the sparsity (prune-preserving scheme chosen automatically)."""
import numpy as np

from tfdeploy.export import savedmodel, tflite

from conftest import run_stages, stage_context


def run_chain(tmp_path, ckpt, stages):
    recipe, context, chain, model = stage_context(tmp_path, ckpt, f"stages={stages}")
    model, reports = run_stages(context, chain, model)
    return context, [(cfg, reports[cfg.name]) for cfg, _ in chain], model


def features(ids):
    ids = np.asarray(ids, np.int32)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32),
            "token_type_ids": np.zeros_like(ids)}


def test_qat_bert_to_int8_tflite(tmp_path, small_bert_dir):
    context, chain, model = run_chain(tmp_path, small_bert_dir,
                                      "[{type: qat, steps: 6, batch_size: 8}]")
    wrapped = {l.name: type(l.quantize_config).__name__ for l in model.layers
               if type(l).__name__ == "QuantizeWrapperV2"}
    for name in ("layer_0_attention_query", "layer_1_output", "classifier"):
        assert wrapped["quant_" + name] == "Default8BitQuantizeConfig"  # int8 weights
    assert wrapped["quant_embeddings_word"] == "WeightOnlyQuantizeConfig"
    value = model.get_layer("quant_layer_0_attention_value").quantize_config
    assert value.weight_attrs == ["kernel"] and value.activation_attrs == []  # float output
    # LayerNorm, softmax-attention and GELU compute in float; where they feed an int8 matmul
    # only their output is quantized (OutputQuantizeConfig / TFMOT's OutputOnlyConfig).
    floats = [n for n in wrapped if "layernorm" in n or n.endswith(("attention", "_act"))]
    assert floats and all(wrapped[n] in ("OutputQuantizeConfig", "OutputOnlyConfig")
                          for n in floats)
    assert chain[0][1]["scheme"] == "default"
    path = savedmodel.export(model, context.plugin.input_specs(), ["n", "p"],
                             str(tmp_path / "sm"), "qat")
    out = str(tmp_path / "qat.tflite")
    tflite.export(path, "tflite_int8", out)  # learned ranges, no calibration
    interp = tflite.interpreter(out)
    ops = {op["op_name"] for op in interp._get_ops_details()}
    details = {t["index"]: t for t in interp.get_tensor_details()}
    fc = [(details[op["inputs"][1]]["name"], details[op["inputs"][0]]["dtype"],
           details[op["inputs"][1]]["dtype"])
          for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    # int8 weights everywhere. V's output stays float so the probs x V matmul is a float
    # BATCH_MATMUL (XNNPACK runs no int8 one): the converter stores V float, and
    # int8_grid_weights stores it back as int8, a hybrid FC (float in, int8 weights).
    assert len(fc) == 13 and all(w == np.int8 for _, _, w in fc)
    hybrid = [name for name, x, _ in fc if x == np.float32]
    assert len(hybrid) == 2 and all("attention_value" in name for name in hybrid)
    matmuls = [details[op["inputs"][0]]["dtype"] for op in interp._get_ops_details()
               if op["op_name"] == "BATCH_MATMUL"]
    assert len(matmuls) == 4 and all(d == np.float32 for d in matmuls)
    gelus = [details[op["inputs"][0]]["dtype"] for op in interp._get_ops_details()
             if op["op_name"] == "GELU"]  # float between DEQUANTIZE/QUANTIZE: XNNPACK runs it
    assert len(gelus) == 2 and all(d == np.float32 for d in gelus)
    # the word-embedding table is int8 and the gather reads it as such
    gathers = [details[op["inputs"][0]] for op in interp._get_ops_details()
               if op["op_name"] == "GATHER"]
    assert any(g["dtype"] == np.int8 and g["shape"][0] == 30522 for g in gathers)
    assert "QUANTIZE" in ops and "DEQUANTIZE" in ops
    batch = features([[101, 2307, 3185, 102], [101, 2919, 2003, 102]])
    keras_logits = model(batch).numpy()
    lite_logits = tflite.runner(out)(batch)
    assert np.max(np.abs(keras_logits - lite_logits)) < 0.1 * (np.abs(keras_logits).max() + 1)


def test_prune_then_qat_preserves_sparsity(tmp_path, small_bert_dir):
    context, chain, model = run_chain(
        tmp_path, small_bert_dir,
        "[{type: prune, steps: 8, frequency: 2, final_sparsity: 0.5, min_weights: 0, "
        "exclude: [classifier], batch_size: 8}, {type: qat, steps: 6, batch_size: 8, "
        "learning_rate: 1.0e-3}]")
    report = chain[1][1]
    assert report["scheme"] == "prune_preserve"
    # zeros counted in the int8 TFLite weights the QAT model converts to
    assert report["int8_zeros"]["after"] >= 0.99 * report["int8_zeros"]["before"] > 0


def test_qat_self_distillation(tmp_path, small_bert_dir):
    """alpha < 1: the int8 model also learns the float model's outputs (KL), which is
    recorded; the stage still returns the quantized model."""
    context, chain, model = run_chain(tmp_path, small_bert_dir,
                                      "[{type: qat, steps: 6, batch_size: 8, alpha: 0.0, "
                                      "evals: 2}]")
    report = chain[0][1]
    first, last = report["kl_to_teacher"]
    assert np.isfinite(first) and np.isfinite(last) and first >= 0
    assert any(type(l).__name__ == "QuantizeWrapperV2" for l in model.layers)
    # a saved QAT model works as a teacher path (loaded inside the QAT wrappers' scope)
    from tfdeploy import checkpoint
    from tfdeploy.stages.teacher import load_teacher

    saved = tmp_path / "saved_qat"
    saved.mkdir()
    checkpoint.save(model, str(saved))
    teacher = load_teacher(str(saved), None, context, "distill")
    batch = features([[101, 2307, 3185, 102]])
    np.testing.assert_allclose(teacher(batch).numpy(), model(batch).numpy(), atol=1e-5)


def test_prune_cluster_qat_chain_keeps_zeros_and_clusters(tmp_path, small_bert_dir):
    """PCQAT on BERT: after prune -> cluster, qat picks the sparsity-and-cluster preserving
    scheme and the int8 TFLite weights keep the zeros and at most 16 values per channel.
    (With TFMOT's shared quantizer object the zeros were lost; see
    tfdeploy.stages.qat.scheme._Registry.)"""
    context, chain, model = run_chain(
        tmp_path, small_bert_dir,
        "[{type: prune, steps: 8, frequency: 2, final_sparsity: 0.5, min_weights: 0, "
        "exclude: [classifier], batch_size: 8}, {type: cluster, number_of_clusters: 16, "
        "steps: 6, batch_size: 8, min_weights: 0, exclude: [classifier]}, "
        "{type: qat, steps: 6, batch_size: 8, learning_rate: 1.0e-3}]")
    report = chain[2][1]
    assert report["scheme"] == "sparsity_cluster_preserve"
    assert report["int8_zeros"]["after"] >= 0.99 * report["int8_zeros"]["before"] > 0
    wrapped = [l for l in model.layers if "attention_query" in l.name]
    assert all(type(l.quantize_config.weight_quantizer).__name__ ==
               "ClusterPreserveDefault8BitWeightsQuantizer" for l in wrapped)
    path = savedmodel.export(model, context.plugin.input_specs(), ["n", "p"],
                             str(tmp_path / "sm"), "pcqat")
    out = str(tmp_path / "pcqat.tflite")
    tflite.export(path, "tflite_int8", out)
    encoder = [(shape, v) for shape, v in tflite.weight_tensors(out) if 2 not in shape]
    assert len(encoder) == 12
    for shape, value in encoder:
        assert np.mean(value == 0) >= 0.495
        assert max(np.unique(row).size for row in value.reshape(shape[0], -1)) <= 16


def test_qat_distils_from_an_earlier_stage(tmp_path, small_bert_dir):
    """teacher: finetune — in a recipe, the QAT of a pruned model learns from the dense
    model of the first stage, found by name; an unknown name is a clear error naming the
    stages there are."""
    import pytest

    from tfdeploy import pipeline
    from tfdeploy.errors import StageError
    from tfdeploy.recipe import load_recipe
    from tfdeploy.stages.teacher import load_teacher

    from conftest import ROOT

    recipe = load_recipe(f"{ROOT}/recipes/tiny.yaml", [
        f"model.checkpoint={small_bert_dir}", "model.layers=null",
        "data.max_train_examples=128", "evaluate.max_examples=64", "output.tensorboard=false",
        f"export.dir={tmp_path / 'saved_models'}", "export.formats=[savedmodel]",
        "benchmark.enabled=false",
        "stages=[{type: train, name: finetune, steps: 4, batch_size: 8}, {type: prune, "
        "steps: 4, frequency: 2, final_sparsity: 0.5, min_weights: 0, exclude: [classifier], "
        "batch_size: 8}, {type: qat, steps: 2, batch_size: 8, alpha: 0.0, teacher: finetune}]"])
    seen = []
    real = load_teacher

    def spy(spec, model, context, stage):
        teacher = real(spec, model, context, stage)
        seen.append((spec, teacher is context.stage_outputs["finetune"], teacher is model))
        return teacher

    import tfdeploy.stages.teacher as module
    module.load_teacher = spy
    try:
        summary = pipeline.run(recipe, pipeline.Options(output_dir=str(tmp_path)))
    finally:
        module.load_teacher = real
    assert seen == [("finetune", True, False)]
    qat = next(r for r in summary["records"] if r["stage"] == "qat" and "stage_report" in r)
    assert np.isfinite(qat["stage_report"]["kl_to_teacher"]).all()

    # a teacher no earlier stage or path provides is refused before any work
    with pytest.raises(StageError, match=r"stage qat: teacher 'fintune' is neither an "
                                         r"earlier stage \(finetune, prune\)"):
        pipeline.prepare(load_recipe(f"{ROOT}/recipes/tiny.yaml", [
            "stages=[{type: train, name: finetune, steps: 1}, {type: prune, steps: 2}, "
            "{type: qat, steps: 1, alpha: 0.0, teacher: fintune}]"]), pipeline.Options())

    class Context:
        stage_outputs = {"finetune": "dense", "prune": "sparse"}
    assert load_teacher("finetune", "entering", Context, "qat") == "dense"
    assert load_teacher("previous", "entering", Context, "qat") == "entering"
    with pytest.raises(StageError, match=r"teacher 'nope' is neither an earlier stage "
                                         r"\(finetune, prune\)"):
        load_teacher("nope", "entering", Context, "qat")


def test_calibrated_ranges_follow_activations_beyond_six():
    """TFMOT starts activation ranges at [-6, 6]: a layer whose outputs reach +-40 is
    clipped until the EMA catches up. ``calibrate`` sets each range from the float model's
    activations, so the fake-quantized model is close to the float one before any step
    (the weights here lie inside [-6, 6]: their ranges are set by the first step)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from tfdeploy.stages.qat import ranges as qat_ranges

    rng = np.random.default_rng(0)
    inputs = keras.Input((16,), name="x")
    wide = keras.layers.Dense(32, name="wide", kernel_initializer=keras.initializers.
                              RandomNormal(stddev=1.0, seed=1))(inputs)  # inside [-6, 6]
    out = keras.layers.Dense(1, name="out")(wide)
    model = keras.Model(inputs, out)
    batches = [rng.normal(scale=10.0, size=(64, 16)).astype(np.float32) for _ in range(4)]
    reference = model(batches[0]).numpy()
    assert np.abs(model.get_layer("wide")(batches[0]).numpy()).max() > 20

    def error(calibrate):
        quantized = tfmot.quantization.keras.quantize_model(model)  # keeps the weights
        chosen = qat_ranges.calibrate(quantized, model, batches) if calibrate else {}
        return np.abs(quantized(batches[0], training=False).numpy() - reference).mean(), chosen

    clipped, _ = error(False)
    calibrated, chosen = error(True)
    assert chosen["wide"][1] > 20 and chosen["wide"][0] < -20  # the ranges were widened
    assert chosen["x"][0] < -6 and chosen["x"][1] > 6  # the QuantizeLayer on the input
    assert calibrated < clipped / 5, (calibrated, clipped)


def test_per_tensor_qat_keeps_one_range_a_conv_and_reloads(tmp_path):
    """granularity: per_tensor gives each conv weight one range in every scheme, and the
    saved stage loads back with the same ranges and outputs (TFMOT's per-channel config,
    saved alone, would build per-channel ranges on load and refuse the file)."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from tfdeploy import checkpoint
    from tfdeploy.stages.qat import scheme as schemes, stage
    from tfdeploy.traits import Traits

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    images = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for scheme in ("default", "prune_preserve", "cluster_preserve"):
        shapes = {}
        for per_tensor in (False, True):
            _, chosen = schemes.scheme_for(scheme, Traits(), (), per_tensor)
            quantized = tfmot.quantization.keras.quantize_apply(
                tfmot.quantization.keras.quantize_annotate_model(model), chosen)
            shapes[per_tensor] = {w.name.split("/")[0]: tuple(w.shape)
                                  for w in quantized.weights if "kernel_min" in w.name}
        assert shapes[False]["quant_conv"] == (4,), (scheme, shapes)
        assert set(shapes[True].values()) == {()}, (scheme, shapes)
        if scheme == "cluster_preserve":
            continue  # TFMOT saves its cluster quantizer as the plain one, either granularity
        folder = tmp_path / scheme
        folder.mkdir()
        checkpoint.save(quantized, str(folder))
        loaded = checkpoint.load(str(folder), tf.distribute.get_strategy(),
                                 scopes=stage.QAT.load_scopes())
        assert {w.name.split("/")[0]: tuple(w.shape) for w in loaded.weights
                if "kernel_min" in w.name} == shapes[True]
        np.testing.assert_array_equal(loaded(images).numpy(), quantized(images).numpy())


def test_a_finished_stage_that_does_not_load_back_runs_again(tmp_path, capsys):
    """TFMOT saves a cluster-preserving QAT layer's quantizer as the plain one, so the file
    holds weights the reloaded model does not build: the pipeline runs such a stage again
    instead of failing the resumed run. A default-scheme stage loads as before."""
    import types

    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from tfdeploy import checkpoint, stage_runs
    from tfdeploy.stages.qat import scheme as schemes, stage
    from tfdeploy.traits import Traits

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    context = types.SimpleNamespace(strategy=tf.distribute.get_strategy(),
                                    plugin=types.SimpleNamespace(custom_objects=dict))
    cfg = types.SimpleNamespace(name="qat")
    for scheme, loads in (("default", True), ("cluster_preserve", False)):
        _, chosen = schemes.scheme_for(scheme, Traits())
        quantized = tfmot.quantization.keras.quantize_apply(
            tfmot.quantization.keras.quantize_annotate_model(model), chosen)
        folder = tmp_path / scheme
        folder.mkdir()
        checkpoint.save(quantized, str(folder))
        loaded = stage_runs.load_stage_output(str(folder), cfg, context, stage.QAT.load_scopes())
        assert (loaded is not None) == loads, scheme
    assert "does not load (Weight count mismatch" in capsys.readouterr().out


def test_a_conv_before_a_quantized_relu_keeps_quantized_weights(tmp_path):
    """TFMOT's LayerReLUQuantize gives a conv followed by a quantized ReLU a no-op config
    (float weights); the stage's layout keeps the weights quantized, still with no
    quantizer between the conv and its ReLU, in every scheme, and the file loads back."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    from ai_edge_litert.interpreter import Interpreter

    from tfdeploy import checkpoint
    from tfdeploy.stages.qat import scheme as schemes, stage
    from tfdeploy.traits import Traits

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.Conv2D(8, 1, name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))
    images = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    for scheme in ("default", "prune_preserve", "cluster_preserve"):
        for per_tensor in (False, True):
            _, chosen = schemes.scheme_for(scheme, Traits(), (), per_tensor)
            quantized = tfmot.quantization.keras.quantize_apply(
                tfmot.quantization.keras.quantize_annotate_model(model), chosen)
            weights = {w.name for w in quantized.get_layer("quant_depthwise").weights}
            assert any("kernel_min" in w for w in weights), (scheme, weights)
            assert not any("post_activation" in w for w in weights), (scheme, weights)
            ranges = {tuple(w.shape) for w in quantized.get_layer("quant_depthwise").weights
                      if "kernel_min" in w.name}
            _, tfmot_own = schemes.scheme_for(scheme, Traits(), (), per_tensor, relu_weights=False)
            float_weights = tfmot.quantization.keras.quantize_apply(
                tfmot.quantization.keras.quantize_annotate_model(model), tfmot_own)
            assert not any("kernel_min" in w.name
                           for w in float_weights.get_layer("quant_depthwise").weights)
            # per channel, TFMOT ranges a depthwise kernel over its last axis (the
            # multiplier, 1 here); the converter then scales each channel
            assert ranges == ({()} if per_tensor else {(1,)}), (scheme, per_tensor, ranges)
    _, chosen = schemes.scheme_for("default", Traits(), (), True)
    quantized = tfmot.quantization.keras.quantize_apply(
        tfmot.quantization.keras.quantize_annotate_model(model), chosen)
    quantized(images)
    converter = tf.lite.TFLiteConverter.from_keras_model(quantized)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    interp = Interpreter(model_content=converter.convert())
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    depthwise = [tensors[op["inputs"][1]] for op in interp._get_ops_details()
                 if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert [(w["dtype"], len(w["quantization_parameters"]["scales"])) for w in depthwise] == \
        [(np.int8, 1)]
    folder = tmp_path / "qat"
    folder.mkdir()
    checkpoint.save(quantized, str(folder))
    loaded = checkpoint.load(str(folder), tf.distribute.get_strategy(),
                             scopes=stage.QAT.load_scopes())
    np.testing.assert_array_equal(loaded(images).numpy(), quantized(images).numpy())


def test_pass_through_layers_of_a_model_with_reused_layers_get_output_quantizers():
    """TFMOT's strip_clustering builds a new model from the same unwrapped layers, so each
    such layer has a node in both models. The pool and flatten between the last conv and
    the classifier must still be found (before: read as having two inputs, left float,
    and ORT ran the last conv in float)."""
    import tf_keras as keras

    from tfdeploy.stages.qat.graph import feeders

    image = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 1, name="conv")(image)
    x = keras.layers.ReLU(6.0, name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(image, keras.layers.Dense(2, name="classifier")(x))
    reused = keras.models.clone_model(model, clone_function=lambda layer: layer)
    assert len(reused.get_layer("pool").inbound_nodes) == 2
    names = ["conv", "classifier"]
    assert feeders(model, names) == feeders(reused, names) == {"pool", "flatten"}
