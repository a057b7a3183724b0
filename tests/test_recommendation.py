"""Recommendation end to end (#17): the ranker on real MovieLens-100k ratings (from the
recbole wheel) through every export format; unseen users and items; malformed data;
the time split; the RMSE and AUC objectives."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import ROOT, run_cli

FORMATS = ["savedmodel", "tflite_fp32", "tflite_fp16", "tflite_dynamic_int8",
           "tflite_int8_embeddings", "onnx_fp32", "onnx_int8", "onnx_int8_embeddings"]
TINY = os.path.join(ROOT, "recipes", "movielens_tiny.yaml")


def only_run(root, name):
    runs = [r for r in os.listdir(os.path.join(root, name)) if not r.startswith(".")]
    assert len(runs) == 1, runs
    return os.path.join(root, name, runs[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    proc = run_cli(TINY, "--output_dir", str(out), "--progress_every=0",
                   f"--set=export.dir={out / 'saved_models'}", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = only_run(str(out), "movielens_tiny")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return run_dir, {r["artifact"]: r for r in json.load(f)["records"]}


def test_tiny_ranker_every_format(tiny_run):
    run_dir, got = tiny_run
    keras_rmse = got["keras"]["metrics"]["rmse"]
    assert got["keras"]["metric"] == "rmse" and 0.8 < keras_rmse < 1.2, got["keras"]
    for name in FORMATS:
        rec = got[name]
        assert rec["metric"] == "rmse" and rec["finite"], name
        assert abs(rec["metrics"]["rmse"] - keras_rmse) < 0.01, (name, rec["metrics"])
        assert set(rec["latency"]) == {"batch_1", "batch_256"}, name
        assert "agreement" not in rec  # no classes to agree on
    for name in ("savedmodel", "tflite_fp32", "onnx_fp32"):
        assert got[name]["max_abs_diff"] < 1e-4, (name, got[name]["max_abs_diff"])
    for name in ("tflite_int8_embeddings", "onnx_int8_embeddings"):
        fp32 = got[name.replace("int8_embeddings", "fp32")]
        assert got[name]["size_bytes"] < 0.5 * fp32["size_bytes"], name
        assert 0 < got[name]["max_abs_diff"] < 0.15, name  # int8 rows and dense weights
    report = open(os.path.join(run_dir, "report.md"), encoding="utf-8").read()
    assert "| stage | rmse | selection rmse |" in report


def test_int8_tables_are_read_as_int8(tiny_run):
    """The TFLite GATHERs and ONNX Gathers of the int8-embeddings artifacts read int8."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    run_dir, got = tiny_run
    interp = Interpreter(model_path=os.path.join(run_dir, got["tflite_int8_embeddings"]["path"]))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    tables = [tensors[op["inputs"][0]] for op in interp._get_ops_details()
              if op["op_name"] == "GATHER"]
    wide = [t for t in tables if t["shape"][1] > 1]  # the per-row scales are [rows, 1]
    assert len(wide) == 6 and all(t["dtype"] == np.int8 for t in wide)  # user, item, 4 side
    model = onnx.load(os.path.join(run_dir, got["onnx_int8_embeddings"]["path"]))
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert sum(n.input[0] in int8 for n in gathers) >= 8


def load_plugin(*overrides):
    import tfdeploy  # noqa: F401
    from tfdeploy import data, models
    from tfdeploy.recipe.load import load_tree
    from tfdeploy.recipe.schema import Recipe
    from tfdeploy.recipe.validate import validate

    recipe = validate(Recipe, *load_tree(TINY, list(overrides)))
    task = data.create(recipe.data, recipe.seed).load()
    plugin = models.create(recipe.model, task.num_labels)
    plugin.adapt(task)
    return task, plugin


def test_unseen_user_and_item_get_a_prediction(tiny_run):
    from tfdeploy.export import runner_for

    run_dir, got = tiny_run
    task, plugin = load_plugin()
    rows = task.validation.examples[:2].copy()
    rows["user_id"] = ["no-such-user", rows["user_id"][1]]
    rows["item_id"] = [rows["item_id"][0], "99999"]
    rows["occupation"] = ["astronaut", rows["occupation"][1]]
    inputs = plugin.encode(rows)
    assert inputs["user_id"][0] == 0 and inputs["item_id"][1] == 0  # the OOV rows
    assert inputs["occupation"][0] == 0 and inputs["user_id"][1] > 0
    for name in ("savedmodel", "tflite_int8_embeddings", "onnx_fp32"):
        out = np.reshape(runner_for(os.path.join(run_dir, got[name]["path"]))(inputs), -1)
        assert out.shape == (2,) and np.all(np.isfinite(out)), (name, out)
        assert np.all((out > 0) & (out < 6)), (name, out)  # a rating, not garbage


def ml_copy(tmp_path):
    from tfdeploy.wheels import cache_dir

    src = os.path.join(cache_dir(), "data", "ml-100k")
    dst = tmp_path / "ml-100k"
    shutil.copytree(src, dst)
    return dst


def test_malformed_rating_row_names_file_and_line(tiny_run, tmp_path):
    folder = ml_copy(tmp_path)
    inter = folder / "ml-100k.inter"
    lines = inter.read_text().splitlines()
    lines[41] = lines[41].split("\t")[0] + "\t242\tfive\t881250949"
    inter.write_text("\n".join(lines) + "\n")
    proc = run_cli(TINY, "--dry_run", f"--set=data.dir={folder}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{inter}:42: rating 'five' is not a number" in proc.stderr
    assert "Traceback" not in proc.stderr

    lines[41] = "196\t242"  # a field short
    inter.write_text("\n".join(lines) + "\n")
    proc = run_cli(TINY, "--dry_run", f"--set=data.dir={folder}")
    assert proc.returncode == 2 and f"{inter}:42: expected 4 tab-separated" in proc.stderr


def test_rating_of_unknown_user_names_line(tiny_run, tmp_path):
    folder = ml_copy(tmp_path)
    inter = folder / "ml-100k.inter"
    lines = inter.read_text().splitlines()
    lines[7] = "5000\t242\t3\t881250949"
    inter.write_text("\n".join(lines) + "\n")
    proc = run_cli(TINY, "--dry_run", f"--set=data.dir={folder}")
    assert proc.returncode == 2
    assert f"{inter}:8: user '5000' is not in" in proc.stderr


def test_time_split_holds_out_each_users_latest(tiny_run):
    task, _ = load_plugin("data.split=time", "data.max_train_examples=0",
                          "data.selection_split=0")
    train, test = task.train.examples, task.validation.examples
    assert abs(len(test) / (len(train) + len(test)) - 0.2) < 0.01
    for user in np.unique(test["user_id"])[:50]:
        assert test["timestamp"][test["user_id"] == user].min() >= \
            train["timestamp"][train["user_id"] == user].max()


def test_click_target_and_auc():
    from tfdeploy.objectives import OBJECTIVES, auc

    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=300), (rng.random(300) < 0.4).astype(np.float32)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert abs(auc(scores, labels) - brute) < 1e-12
    assert auc(np.round(scores), labels) == pytest.approx(
        np.mean([(p > n) + 0.5 * (p == n) for p in np.round(pos) for n in np.round(neg)]))
    click = OBJECTIVES["auc"]
    assert click.scores(scores[:, None], labels)["auc"] == pytest.approx(brute)
    assert click.drop(0.80, 0.78) == pytest.approx(0.02)
    assert OBJECTIVES["rmse"].drop(0.90, 0.91) == pytest.approx(0.01)  # lower is better


def test_savedmodel_takes_raw_features(tiny_run):
    """``serving_default`` looks ids and tokens up inside the graph: raw strings give the
    same ratings as ``serving_ids`` fed the plugin's encoding, unseen ids included."""
    import tensorflow as tf

    run_dir, got = tiny_run
    task, plugin = load_plugin()
    rows = task.validation.examples[:5].copy()
    rows["user_id"][0], rows["item_id"][1], rows["genres"][2] = "no-such-user", "99999", ""
    loaded = tf.saved_model.load(os.path.join(run_dir, got["savedmodel"]["path"]))
    raw = loaded.signatures["serving_default"](**{
        f: tf.constant([str(v) for v in rows[f]]) for f in
        ("user_id", "item_id", "age", "gender", "occupation", "year", "genres")})
    ids = loaded.signatures["serving_ids"](**{
        k: tf.constant(v) for k, v in plugin.encode(rows).items()})
    assert set(raw) == {"prediction"} and raw["prediction"].shape == (5,)  # a rating each
    np.testing.assert_allclose(raw["prediction"].numpy(), ids["prediction"].numpy(), atol=1e-6)
    assert np.all(np.isfinite(raw["prediction"].numpy()))



def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parameter_server_shards_tables(tiny_run, tmp_path):
    """1 chief + 2 workers + 2 ps, real processes on loopback: the tables are split across
    both ps tasks, and the result is close to the single-process run's."""
    import subprocess
    import sys

    cluster = {"chief": [f"127.0.0.1:{free_port()}"],
               "worker": [f"127.0.0.1:{free_port()}" for _ in range(2)],
               "ps": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    args = [sys.executable, "-m", "tfdeploy.run", TINY, "--strategy=parameter_server",
            "--progress_every=0", "--set=distribution.min_shard_bytes=4096",
            "--set=export.formats=[savedmodel]", "--set=benchmark.enabled=false",
            f"--output_dir={tmp_path / 'runs'}", f"--set=export.dir={tmp_path / 'sm'}"]

    def env(job, index):
        return dict(os.environ, PYTHONUNBUFFERED="1", TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": job, "index": index}}))

    servers = [subprocess.Popen(args, cwd=ROOT, env=env(job, i), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for job in ("worker", "ps") for i in range(2)]
    try:
        chief = subprocess.run(args, cwd=ROOT, env=env("chief", 0), capture_output=True,
                               text=True, timeout=600)
        alive = [s.poll() is None for s in servers]  # serving until stopped
    finally:
        for s in servers:
            s.kill()
    assert chief.returncode == 0, chief.stdout[-3000:] + chief.stderr[-3000:]
    assert all(alive)
    run_dir = only_run(str(tmp_path / "runs"), "movielens_tiny")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["strategy"]["strategy"] == "parameter_server"
    assert metrics["strategy"]["workers"] == 2 and metrics["strategy"]["ps"] == 2
    keras_rec = next(r for r in metrics["records"] if r["artifact"] == "keras")
    sharded = keras_rec["stage_report"]["sharded_variables"]
    for table in ("user_embedding/embeddings", "item_embedding/embeddings"):
        devices = {shard["device"] for shard in sharded[table]}
        assert len(devices) == 2 and all("/job:ps/" in d for d in devices), sharded[table]
    _, single = tiny_run
    assert abs(keras_rec["metrics"]["rmse"] - single["keras"]["metrics"]["rmse"]) < 0.03
    assert os.path.exists(tmp_path / "sm" / "movielens_tiny" / "1" / "saved_model.pb")


def test_parameter_server_refuses_clearly(tmp_path):
    """No TF_CONFIG, a cluster without ps, or a stage it cannot run: exit 2 before any
    work (and before waiting for a cluster)."""
    recipe = os.path.join(ROOT, "recipes", "movielens.yaml")  # train, then distill
    args = ["--strategy=parameter_server", f"--output_dir={tmp_path}"]
    assert "TF_CONFIG" not in os.environ
    env = {}
    proc = run_cli(TINY, *args)
    assert proc.returncode == 2 and "parameter_server needs TF_CONFIG" in proc.stderr
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
    env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    proc = run_cli(TINY, *args, env=env)
    assert proc.returncode == 2 and "the cluster has no ps" in proc.stderr, proc.stderr
    cluster["ps"] = ["127.0.0.1:3"]
    env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}})
    proc = run_cli(recipe, *args, env=env, timeout=120)
    assert proc.returncode == 2 and "stage distill (distill)" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)


def grpc_regress(server, instances):
    """The values TF Serving's own gRPC client gets from ``Regress`` (tf.Example rows)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc, regression_pb2

    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc}"))
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "ml"
    for row in instances:
        example = request.input.example_list.examples.add()
        for key, value in row.items():
            example.features.feature[key].bytes_list.value.append(str(value).encode())
    response = stub.Regress(request, 30)
    assert response.model_spec.version.value == 1
    return [r.value for r in response.result.regressions]


def test_served_with_raw_features(tiny_run):
    """``tfdeploy.serve`` answers raw feature rows (strings, as a client has them) the way
    the SavedModel's own ``serving_default`` does (TF Serving), from the SavedModel and
    from a TFLite artifact (the server does the lookups): :predict, :regress, metadata."""
    import tensorflow as tf
    from test_serve import Server

    run_dir, got = tiny_run
    base = os.path.join(os.path.dirname(os.path.dirname(run_dir)), "saved_models",
                        "movielens_tiny")
    task, _ = load_plugin()
    ex = task.validation.examples[:4]
    features = ("user_id", "item_id", "age", "gender", "occupation", "year", "genres")
    instances = [{f: str(row[f]) for f in features} for row in ex]
    instances[0]["user_id"], instances[1]["item_id"] = "no-such-user", "99999"
    instances[2]["age"] = 24  # a number is read as its text, as clients send ids
    loaded = tf.saved_model.load(os.path.join(base, "1"))
    expected = loaded.signatures["serving_default"](**{
        f: tf.constant([str(i[f]) for i in instances]) for f in features})["prediction"]
    for artifact in ("savedmodel", "tflite_fp32"):
        server = Server("--model_name=ml", f"--model_base_path={base}",
                        f"--artifact={artifact}")
        try:
            status, body = server.call("/v1/models/ml:predict", {"instances": instances})
            assert status == 200, body
            np.testing.assert_allclose(body["predictions"], expected.numpy(), atol=1e-4)
            status, body = server.call("/v1/models/ml:regress", {"examples": instances})
            assert status == 200 and len(body["results"]) == 4, body
            np.testing.assert_allclose(body["results"], expected.numpy(), atol=1e-4)
            status, body = server.call("/v1/models/ml:classify", {"examples": instances})
            assert status == 400 and ":regress" in body["error"], body
            np.testing.assert_allclose(grpc_regress(server, instances), expected.numpy(),
                                       atol=1e-4)
            status, body = server.call("/v1/models/ml:predict", {"instances": [
                {k: v for k, v in instances[0].items() if k != "genres"}]})
            assert status == 400 and "genres" in body["error"], body
            status, meta = server.call("/v1/models/ml/metadata")
            sigs = meta["metadata"]["signature_def"]["signature_def"]
            assert sigs["serving_default"]["inputs"]["user_id"]["dtype"] == "DT_STRING"
            assert set(sigs["serving_default"]["outputs"]) == {"prediction"}
            assert sigs["serving_ids"]["inputs"]["user_id"]["dtype"] == "DT_INT32"
        finally:
            server.stop()


def test_ranker_on_other_data_is_refused(tmp_path, sst2_dir):
    proc = run_cli(os.path.join(ROOT, "recipes", "tiny.yaml"), "--dry_run",
                   "--set=model={type: ranker}", f"--output_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model type ranker takes tables, but data type sst2 gives text" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_int8_tables_after_qat_are_refused_before_any_work(tmp_path):
    """A QAT model's tables are int8 in its own conversion: asking for int8 embeddings
    after a qat stage is a recipe error, found before training (not at export time)."""
    recipe = tmp_path / "qat_tables.yaml"
    recipe.write_text(f"""base: {TINY}
name: qat_tables
stages:
  - {{type: train, epochs: 1, batch_size: 256, warmup: 0}}
  - {{type: qat, layer_types: [dense], ranges: calibrated, epochs: 1, batch_size: 256,
     warmup: 0}}
""")
    out = tmp_path / "runs"
    for extra in ([], ["--dry_run"]):
        proc = run_cli(str(recipe), f"--output_dir={out}", *extra)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "export.formats: tflite_int8_embeddings cannot be made after stage" in \
            proc.stderr and "quantization-aware" in proc.stderr
        assert "onnx_int8_embeddings cannot be made" in proc.stderr
        assert "Traceback" not in proc.stderr and ": running" not in proc.stdout
    assert not out.exists() or not any(out.rglob("*.json"))
