"""Post-training quantization that searches (issue #18): the LiteRT Quantizer formats, the
GATHER -> EMBEDDING_LOOKUP rewrite they need, the recipe checks, and the accuracy search
forced by a tight gate on the tiny recipe (real SST-2 rows, a 2-layer MiniLM slice)."""
import json
import os

import numpy as np
import pytest

from tfdeploy.export import litert, tflite_rewrites

from conftest import ROOT, run_cli

TINY = os.path.join(ROOT, "recipes", "tiny.yaml")


def gather_model(tmp_path, width=64):
    """A float TFLite file whose only op reads a constant table with [batch, seq] ids."""
    import tensorflow as tf

    table = tf.constant(np.random.default_rng(0).normal(size=(200, width)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
    def lookup(ids):
        return {"logits": tf.gather(table, ids)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [lookup.get_concrete_function()], lookup)
    path = tmp_path / "gather.tflite"
    path.write_bytes(converter.convert())
    return path


def run_tflite(data, ids):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.resize_tensor_input(inp["index"], ids.shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], ids)
    interp.invoke()
    return interp.get_tensor(out["index"])


def test_gather_becomes_embedding_lookup_with_the_same_rows(tmp_path):
    data = gather_model(tmp_path).read_bytes()
    rewritten = tflite_rewrites.gathers_as_lookups(data)
    ops = [op for _, op, _ in litert.op_outputs(rewritten)]
    assert "GATHER" not in ops and "EMBEDDING_LOOKUP" in ops
    ids = np.array([[1, 7, 199], [0, 3, 3]], np.int32)
    np.testing.assert_array_equal(run_tflite(rewritten, ids), run_tflite(data, ids))
    # and the quantizer now quantizes the table: int4 rows, close to the float ones
    quantized = litert.quantize(rewritten, [litert.rule("EMBEDDING_LOOKUP", 4, "BLOCKWISE_32")])
    assert len(quantized) < len(rewritten) / 3
    err = np.abs(run_tflite(quantized, ids) - run_tflite(data, ids)).max()
    assert 0 < err < 0.5


class FakeJob:
    """What a quantizer format reads from an export job: the recipe and the float file."""

    def __init__(self, data):
        self.data = data
        self.recipe = None

    def once(self, key, make):
        return make()

    def tflite_lookups(self):
        return self.data


def test_blockwise_rule_falls_back_to_per_channel_where_blocks_do_not_fit(tmp_path):
    data = tflite_rewrites.gathers_as_lookups(gather_model(tmp_path, width=24).read_bytes())
    job = FakeJob(data)
    recipe = litert.Int4().mixed_recipe(job, {})
    (layer, op), = litert.Int4().layers(job)
    chosen = litert.last_rule(recipe, op, layer + ";")
    assert chosen["op_config"]["weight_tensor_config"]["granularity"] == "CHANNELWISE"
    assert chosen["op_config"]["weight_tensor_config"]["num_bits"] == 4
    ids = np.array([[1, 2]], np.int32)
    quantized = litert.quantize(data, recipe)  # 24 is not a multiple of 32: no error
    assert np.abs(run_tflite(quantized, ids) - run_tflite(data, ids)).max() < 0.5
    kept = litert.Int4().mixed_recipe(job, {layer: "int8"})
    assert litert.last_rule(kept, op, layer + ";")["op_config"]["weight_tensor_config"][
        "num_bits"] == 8


@pytest.mark.parametrize("text, expected", [
    ("{not json", "not JSON"),
    ("[]", "non-empty JSON list"),
    ('[{"regex": ".*", "operation": "*"}]', "rule 0 needs string fields algorithm_key"),
    ('[{"regex": "(", "operation": "*", "algorithm_key": "no_quantize"}]', "rule 0: regex"),
])
def test_bad_quantizer_recipe_is_named(tmp_path, text, expected):
    path = tmp_path / "recipe.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=expected):
        litert.load_recipe(str(path))


def test_recipe_checks_refuse_before_any_work(tmp_path):
    proc = run_cli(TINY, f"--output_dir={tmp_path}", "--set=export.formats=[tflite_recipe]",
                   "--set=evaluate.search=always")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "export.quantizer_recipe" in proc.stderr and "tflite_recipe" in proc.stderr
    assert "evaluate.search" in proc.stderr and "max_drop" in proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def searched_run(tmp_path_factory, sst2_dir):
    """tflite_w4 (weight-only int4, embeddings included) misses a 0.5-point gate on the
    tiny model; the search on the selection split then keeps layers at int8."""
    tmp = tmp_path_factory.mktemp("search")
    args = [TINY, f"--output_dir={tmp / 'runs'}", f"--set=export.dir={tmp / 'saved_models'}",
            "--set=export.formats=[tflite_w4]", "--set=evaluate.max_drop=0.005",
            "--set=evaluate.search_max_layers=3"]
    proc = run_cli(*args)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    (run_dir,) = (tmp / "runs" / "tiny").iterdir()
    records = json.loads((run_dir / "metrics.json").read_text())["records"]
    return tmp, args, proc, run_dir, {r["artifact"]: r for r in records}


def test_search_keeps_sensitive_layers_at_higher_precision(searched_run):
    _, _, proc, _, records = searched_run
    search = records["tflite_w4"]["search"]
    assert "below the baseline" in search["trigger"]  # it ran because the gate failed
    curve = search["curve"]
    assert curve[0]["kept"] == 0 and len(curve) >= 2
    kept = search["kept"]
    assert 1 <= len(kept) <= 3 and set(kept.values()) == {"int8"}
    # each kept step predicts more selection rows as the float file does, and the
    # accuracy follows
    accepted = [step for step in curve if step["accepted"]]
    agreements = [step["agreement"] for step in accepted]
    assert agreements == sorted(agreements) and agreements[-1] > agreements[0]
    assert accepted[-1]["accuracy"] > accepted[0]["accuracy"]
    assert search["evaluations"] >= len(search["sensitivity"]) + len(curve)
    assert search["seconds"] > 0
    layers = [s["layer"] for s in search["sensitivity"]]
    assert set(kept) <= set(layers)
    errors = [s["output_mse"] for s in search["sensitivity"]]
    assert errors == sorted(errors, reverse=True)
    if proc.returncode == 3:  # the validation gate may still fail: it says what was tried
        assert "the search tried" in proc.stderr and "stopped:" in proc.stderr
    else:
        assert records["tflite_w4"]["gate"] == "passed"


def test_searched_recipe_is_reusable_and_the_search_deterministic(searched_run):
    tmp, args, _, run_dir, records = searched_run
    recipe_json = str(run_dir / records["tflite_w4"]["search"]["recipe"])
    assert (run_dir / "report.md").read_text().count("## Accuracy search: tflite_w4") == 1
    assert json.load(open(recipe_json))[-1]["regex"].startswith("^")
    proc = run_cli(*args[:3], "--resume", "--set=export.formats=[tflite_w4,tflite_recipe]",
                   f"--set=export.quantizer_recipe={recipe_json}", *args[4:])
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    runs = sorted((tmp / "runs" / "tiny").iterdir())
    again = {r["artifact"]: r for r in
             json.loads((runs[-1] / "metrics.json").read_text())["records"]}
    first = records["tflite_w4"]["search"]
    assert again["tflite_w4"]["search"]["kept"] == first["kept"]  # same seed, same choice
    assert again["tflite_w4"]["search"]["sensitivity"] == first["sensitivity"]
    reused = again["tflite_recipe"]
    if "search" not in reused:  # the saved recipe rebuilds the searched file
        assert reused["size_bytes"] == records["tflite_w4"]["size_bytes"]
        assert reused["metrics"] == records["tflite_w4"]["metrics"]
    else:  # it failed the gate as the searched file did; its own search starts from it
        chosen = [step for step in first["curve"] if step["accepted"]][-1]
        assert reused["search"]["curve"][0]["size_bytes"] == chosen["size_bytes"]
        assert reused["search"]["curve"][0]["accuracy"] == chosen["accuracy"]


def test_selection_baseline_reads_records_of_older_runs():
    """A stage reused by --from/--resume may carry a record written before records named
    their metric: its selection accuracy is still the baseline (was a KeyError)."""
    from tfdeploy.deliver import selection_baseline

    old = {"artifact": "keras", "metrics": {"accuracy": 0.9},
           "selection": {"metrics": {"accuracy": 0.93}}}
    assert selection_baseline([old]) == 0.93
    new = dict(old, metric="rmse", selection={"metrics": {"rmse": 0.91}})
    assert selection_baseline([new]) == 0.91
    assert selection_baseline([]) is None


def test_static_int8_transformer_runs_int8_matmuls_and_qattention(searched_run):
    """onnx_static_int8 of the tiny MiniLM: every weight matmul and attention runs in an
    int8 kernel of ORT's optimized graph, LayerNorm reads float (its residual stream is
    not quantized), and the file scores within 2 points of onnx_fp32 on the dev rows."""
    import collections

    import onnx
    import onnxruntime as ort

    tmp, args, _, _, _ = searched_run
    proc = run_cli(*args[:3], "--resume", "--set=export.formats=[onnx_fp32,onnx_static_int8]",
                   "--set=evaluate.max_drop=0.02")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = sorted((tmp / "runs" / "tiny").iterdir())[-1]
    records = {r["artifact"]: r for r in
               json.loads((run_dir / "metrics.json").read_text())["records"]}
    static, fp32 = records["onnx_static_int8"], records["onnx_fp32"]
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(run_dir / static["path"]), options,
                         providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp / "optimized.onnx")).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    float_ops = collections.Counter(
        n.op_type for n in onnx.load(str(run_dir / fp32["path"])).graph.node)
    assert ops["QAttention"] == float_ops["Attention"] == 2 and ops["Attention"] == 0
    weights = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                and any(i in weights for i in n.input)]  # no float weight matmul left
    assert ops["QGemm"] + ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] >= 4
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producers.get(n.input[0]) != "DequantizeLinear"
               for n in graph.node if n.op_type == "LayerNormalization")
    assert static["size_bytes"] < 0.4 * fp32["size_bytes"]
    assert abs(static["metrics"]["accuracy"] - fp32["metrics"]["accuracy"]) <= 0.02


def dense_model(tmp_path):
    """A float TFLite file of two FULLY_CONNECTED layers."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    w1 = tf.constant(rng.normal(size=(16, 32)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(32, 10)).astype(np.float32))

    module = tf.Module()
    module.net = tf.function(lambda x: {"logits": tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)},
                             input_signature=[tf.TensorSpec([None, 16], tf.float32, name="x")])
    tf.saved_model.save(module, str(tmp_path / "dense"), signatures={"serving_default":
                                                                     module.net})
    return tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "dense")).convert()


def fc_weight_types(data):
    """The stored types of the FULLY_CONNECTED weights of .tflite bytes."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    return [names[graph.tensors[op.inputs[1]].type] for op in graph.operators
            if model.operatorCodes[op.opcodeIndex].builtinCode ==
            schema.BuiltinOperator.FULLY_CONNECTED]


def test_int4_weights_run_as_int8_when_the_file_asks_with_the_same_outputs(tmp_path,
                                                                          monkeypatch):
    from ai_edge_litert.interpreter import Interpreter
    from tfdeploy.export import int4_kernels, tflite

    int4 = litert.quantize(dense_model(tmp_path), [litert.rule("FULLY_CONNECTED", 4)])
    assert fc_weight_types(int4) == ["INT4", "INT4"]
    assert fc_weight_types(int4_kernels.widen(int4)) == ["INT8", "INT8"]
    assert int4_kernels.mark(int4, "int4") == int4  # no hint: XNNPACK's int4 kernels
    marked = tmp_path / "marked.tflite"
    marked.write_bytes(int4_kernels.mark(int4, "int8"))
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(int4)
    assert int4_kernels.wants_int8(str(marked)) and not int4_kernels.wants_int8(str(plain))
    assert marked.stat().st_size < plain.stat().st_size + 200  # the file stays int4

    widened = []
    widen = int4_kernels.widen
    monkeypatch.setattr(int4_kernels, "widen", lambda data: widened.append(1) or widen(data))
    x = {"x": np.random.default_rng(2).normal(size=(3, 16)).astype(np.float32)}
    tflite.runner(str(plain))(x)
    assert widened == []
    got = tflite.runner(str(marked))(x)
    assert widened == [1]
    stock = Interpreter(model_path=str(marked))  # stock LiteRT ignores the hint
    want = stock.get_signature_runner("serving_default")(**x)["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(want).max() > 0.1


def test_auto_hint_widens_only_on_a_cpu_with_amx(tmp_path, monkeypatch):
    from tfdeploy.export import int4_kernels

    int4 = litert.quantize(dense_model(tmp_path), [litert.rule("FULLY_CONNECTED", 4)])
    auto = tmp_path / "auto.tflite"
    auto.write_bytes(int4_kernels.mark(int4, "auto"))
    monkeypatch.setattr(int4_kernels, "cpu_flags", lambda: {"avx512f", "amx_int8"})
    assert int4_kernels.wants_int8(str(auto)) and int4_kernels.resolve("auto") == "int8"
    monkeypatch.setattr(int4_kernels, "cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert not int4_kernels.wants_int8(str(auto)) and int4_kernels.resolve("auto") == "int4"
    assert int4_kernels.resolve("int8") == "int8"


def test_int4_unpacking_is_signed_low_nibble_first():
    from tfdeploy.export.int4_kernels import unpack_int4

    packed = np.array([0x71, 0x8F, 0x0A], np.uint8)  # 1, 7 | -1, -8 | -6, (0)
    np.testing.assert_array_equal(unpack_int4(packed, 5), [1, 7, -1, -8, -6])


def test_a_file_that_is_not_tflite_gets_litert_own_error(tmp_path):
    from tfdeploy.export import int4_kernels, tflite

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a model at all")
    assert not int4_kernels.wants_int8(str(bad))
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    assert not int4_kernels.wants_int8(str(empty))
    with pytest.raises(ValueError):
        tflite.interpreter(str(bad))
