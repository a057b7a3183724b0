"""tfdeploy.serve against TF Serving's documented REST and gRPC formats, on a version the
tiny recipe published (SavedModel, TFLite and ONNX artifacts inside): every endpoint, the
same answer from every runtime, a hot version swap under traffic with no failed request,
a broken version that never replaces a working one, batching, capacity limits, malformed
requests, SIGTERM, and the TF Serving config files the export writes."""
import base64
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import ROOT, run_cli

FORMATS = "[savedmodel, tflite_fp32, tflite_dynamic_int8, onnx_fp32]"
SENTENCES = ["a wonderful, moving film", "dull and lifeless", "it is not bad at all",
             "the plot makes no sense", "great acting", "boring", "i loved it",
             "a waste of two hours"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, sst2_dir):
    """saved_models/srv/1 from a one-layer slice of the tiny recipe, with its artifacts."""
    tmp = tmp_path_factory.mktemp("serve")
    recipe = tmp / "srv.yaml"
    recipe.write_text(f"""base: {os.path.join(ROOT, 'recipes', 'tiny.yaml')}
name: srv
model: {{layers: [0]}}
data: {{max_train_examples: 600}}
stages: [{{type: train, steps: 20, batch_size: 32, learning_rate: 2.0e-4, evals: 1}}]
export: {{formats: {FORMATS}, dir: {tmp / 'saved_models'}}}
benchmark: {{enabled: true, batch_sizes: [1], runs: 20, seconds: 1, block: 2, settle: 0.05}}
serve: {{batching: {{max_batch_size: 8, batch_timeout_micros: 5000,
                    allowed_batch_sizes: [1, 2, 4, 8]}}}}
output: {{tensorboard: false}}
""")
    proc = run_cli(str(recipe), f"--output_dir={tmp / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


class Server:
    """A ``python -m tfdeploy.serve`` process on free loopback ports."""

    def __init__(self, *flags):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfdeploy.serve", "--port=0", "--rest_api_port=0",
             *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"HTTP/REST API at:[\d.]+:(\d+)", line)
            if found:
                self.rest = int(found.group(1))
                self.grpc = int(re.search(r"gRPC ModelServer at [\d.]+:(\d+)",
                                          "".join(self.lines)).group(1))
                return
        self.proc.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines)[-3000:])

    def url(self, path):
        return f"http://127.0.0.1:{self.rest}{path}"

    def call(self, path, body=None, raw=None, method=None):
        """(status, parsed JSON body)."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path), data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, "".join(self.lines) + out


@pytest.fixture(scope="module")
def server(published):
    s = Server("--model_name=srv", f"--model_base_path={published / 'saved_models' / 'srv'}",
               "--enable_batching",
               f"--batching_parameters_file={published / 'saved_models' / 'batching_parameters.txt'}",
               "--file_system_poll_wait_seconds=1", "--rest_api_timeout_in_ms=1500")
    yield s
    s.stop()


def ids_request(texts):
    from tfdeploy.models.bert import BertTokenizer
    from tfdeploy.models import checkpoints

    tok = BertTokenizer(os.path.join(checkpoints.resolve("minilm-l6"), "vocab.txt"))
    return tok(texts)


def test_rest_endpoints_follow_tf_serving(server):
    status, body = server.call("/v1/models/srv")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
        "error_code": "OK", "error_message": ""}}]}
    assert server.call("/v1/models/srv/versions/1")[1] == body
    status, meta = server.call("/v1/models/srv/metadata")
    assert status == 200 and meta["model_spec"] == {"name": "srv", "signature_name": "",
                                                     "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "serving_text"}
    ids_sig = sigs["serving_default"]
    assert set(ids_sig["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert ids_sig["inputs"]["input_ids"]["dtype"] == "DT_INT32"
    assert [d["size"] for d in ids_sig["inputs"]["input_ids"]["tensor_shape"]["dim"]] == \
        ["-1", "-1"]
    assert ids_sig["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "2"
    assert ids_sig["method_name"] == "tensorflow/serving/predict"
    assert sigs["serving_text"]["inputs"]["text"]["dtype"] == "DT_STRING"

    # row format on the text signature: a sentence in, predictions out
    status, rows = server.call("/v1/models/srv:predict", {
        "signature_name": "serving_text", "instances": SENTENCES[:3]})
    assert status == 200 and len(rows["predictions"]) == 3
    first = rows["predictions"][0]
    assert set(first) == {"logits", "probabilities", "label_id"}
    assert abs(sum(first["probabilities"]) - 1) < 1e-5
    # columnar on the id signature gives the same numbers for the same sentences
    ids = ids_request(SENTENCES[:3])
    status, cols = server.call("/v1/models/srv/versions/1:predict", {
        "inputs": {k: v.tolist() for k, v in ids.items()}})
    assert status == 200
    assert np.allclose(cols["outputs"]["logits"],
                       [p["logits"] for p in rows["predictions"]], atol=1e-4)
    assert cols["outputs"]["label_id"] == [p["label_id"] for p in rows["predictions"]]
    # row format with one object per instance on the id signature
    instances = [{k: v[i].tolist() for k, v in ids.items()} for i in range(3)]
    status, by_row = server.call("/v1/models/srv:predict", {"instances": instances})
    assert status == 200 and [p["label_id"] for p in by_row["predictions"]] == \
        cols["outputs"]["label_id"]

    status, classes = server.call("/v1/models/srv:classify",
                                  {"examples": [{"text": s} for s in SENTENCES[:2]]})
    assert status == 200 and len(classes["results"]) == 2
    assert [label for label, _ in classes["results"][0]] == ["negative", "positive"]
    assert np.allclose([score for _, score in classes["results"][0]],
                       rows["predictions"][0]["probabilities"], atol=1e-5)

    for path, body, want in [
            ("/v1/models/nope", None, 404), ("/v1/models/srv/versions/9", None, 404),
            ("/v1/models/srv/versions/9:predict", {"instances": ["x"]}, 404),
            ("/v1/models/srv:predict", {"signature_name": "nope", "instances": ["x"]}, 404),
            ("/v1/models/srv:predict", {"instances": [1], "inputs": [1]}, 400),
            ("/v1/models/srv:predict", {"signature_name": "serving_text",
                                        "instances": list(range(3))}, 400)]:
        status, err = server.call(path, body)
        assert status == want and isinstance(err["error"], str) and err["error"], (path, err)

    metrics = urllib.request.urlopen(server.url("/monitoring/prometheus/metrics")).read()
    text = metrics.decode()
    assert 'tfdeploy_requests_total{model="srv",api="predict",status="200"}' in text
    assert "tfdeploy_request_latency_ms_bucket" in text and "tfdeploy_batch_size_count" in text


def test_grpc_with_tf_serving_client(server):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                         get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc)

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "srv", "serving_text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(SENTENCES[:2]))
    response = stub.Predict(request, 30)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.shape == (2, 2) and response.model_spec.version.value == 1
    _, rest = server.call("/v1/models/srv:predict", {"signature_name": "serving_text",
                                                     "instances": SENTENCES[:2]})
    assert np.allclose(probabilities, [p["probabilities"] for p in rest["predictions"]],
                       atol=1e-5)

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "srv"
    example = classify.input.example_list.examples.add()
    example.features.feature["text"].bytes_list.value.append(SENTENCES[0].encode())
    classes = stub.Classify(classify, 30).result.classifications[0].classes
    assert [c.label for c in classes] == ["negative", "positive"]
    assert abs(classes[1].score - probabilities[0][1]) < 1e-5

    meta = get_model_metadata_pb2.GetModelMetadataRequest()
    meta.model_spec.name = "srv"
    meta.metadata_field.append("signature_def")
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(meta, 30).metadata["signature_def"].Unpack(signature_map)
    assert set(signature_map.signature_def) == {"serving_default", "serving_text"}

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "srv"
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, 30)
    assert [(s.version, s.state) for s in reply.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]

    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as missing:
        stub.Predict(request, 30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    request.model_spec.name = "srv"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([1, 2]))
    with pytest.raises(grpc.RpcError) as bad:
        stub.Predict(request, 30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_runtime_gives_the_same_answer(published):
    """Same request, same answer from TF, LiteRT and ONNX Runtime: float artifacts to
    1e-4, the int8 one within its measured agreement."""
    from tfdeploy.serve.servable import Servable

    version = str(published / "saved_models" / "srv" / "1")
    answers = {}
    for artifact in ("savedmodel", "tflite_fp32", "onnx_fp32", "tflite_dynamic_int8"):
        servable = Servable(version, artifact)
        assert servable.runtime == {"savedmodel": "tf", "onnx_fp32": "onnxruntime"}.get(
            artifact, "litert")
        rows = servable.tokenize(SENTENCES)
        longest = max(r["input_ids"].shape[1] for r in rows)
        batch = {k: np.concatenate([np.pad(r[k], [(0, 0), (0, longest - r[k].shape[1])])
                                    for r in rows]) for k in rows[0]}
        answers[artifact] = servable.run(batch)
    for artifact in ("tflite_fp32", "onnx_fp32"):
        assert np.abs(answers[artifact]["logits"] - answers["savedmodel"]["logits"]).max() < 1e-4
    manifest = json.loads((published / "saved_models" / "srv" / "1" / "assets.extra" /
                           "tfdeploy" / "serving.json").read_text())
    agreement = np.mean(answers["tflite_dynamic_int8"]["label_id"] ==
                        answers["savedmodel"]["label_id"])
    assert agreement >= min(manifest["artifacts"]["tflite_dynamic_int8"]["agreement"], 0.875)
    timed = {n: a["latency_ms_batch_1"] for n, a in manifest["artifacts"].items()}
    assert Servable(version).artifact == min(timed, key=timed.get)  # auto: the fastest


def test_hot_swap_under_traffic_and_a_broken_version(server, published):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    base = published / "saved_models" / "srv"
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{server.grpc}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "srv", "serving_text"
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(SENTENCES[:1]))
    stop, results = time.time() + 1e9, []

    def client(n):
        out = []
        while time.time() < stop:
            try:
                if n % 2:
                    out.append(("grpc", stub.Predict(request, 30).model_spec.version.value))
                else:
                    status, _ = server.call("/v1/models/srv:predict", {
                        "signature_name": "serving_text", "instances": SENTENCES[:2]})
                    out.append(("rest", status))
            except grpc.RpcError as e:
                out.append(("grpc", f"error {e.code()}"))
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, n) for n in range(4)]
        time.sleep(2)
        staging = base / ".tmp-copy"
        shutil.copytree(base / "1", staging)  # a new version appears atomically
        os.rename(staging, base / "2")
        deadline = time.time() + 120
        while time.time() < deadline:
            _, status = server.call("/v1/models/srv")
            states = {s["version"]: s["state"] for s in status["model_version_status"]}
            if states.get("2") == "AVAILABLE" and states.get("1") == "END":
                break
            time.sleep(0.5)
        broken = base / ".tmp-broken"
        broken.mkdir()
        (broken / "saved_model.pb").write_bytes(b"not a saved model")
        os.rename(broken, base / "3")
        time.sleep(4)
        stop = time.time()
        for f in futures:
            results.extend(f.result())
    failures = [r for r in results if r[1] not in (200, 1, 2)]
    assert len(results) > 20 and not failures, failures[:5]
    assert ("grpc", 2) in results  # the swap happened during the traffic
    _, status = server.call("/v1/models/srv")
    states = {s["version"]: (s["state"], s["status"]["error_message"])
              for s in status["model_version_status"]}
    assert states["2"][0] == "AVAILABLE" and states["1"][0] == "END"
    assert states["3"][0] == "END" and "saved_model.pb" in states["3"][1]
    assert server.call("/v1/models/srv/versions/2:predict", {
        "signature_name": "serving_text", "instances": SENTENCES[:1]})[0] == 200


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(server):
    rng = np.random.default_rng(0)
    bodies = [b"", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe\x00", b"{\"instances\": NaN}",
              b'{"instances": [1e999]}', b"[" * 100000 + b"]" * 100000]
    objects = [{}, {"instances": []}, {"inputs": []}, {"instances": "x"},
               {"instances": [{}]}, {"instances": [[[[]]]]}, {"inputs": {"input_ids": []}},
               {"inputs": {"input_ids": [[1, 2]]}},
               {"inputs": {"input_ids": [[1]], "attention_mask": [[1]],
                           "token_type_ids": [[0]], "extra": [[1]]}},
               {"inputs": {"input_ids": [[1, 2], [3]], "attention_mask": [[1, 1], [1]],
                           "token_type_ids": [[0, 0], [0]]}},
               {"inputs": {"input_ids": [["a"]], "attention_mask": [[1]],
                           "token_type_ids": [[0]]}},
               {"inputs": {"input_ids": [[1.5]], "attention_mask": [[1]],
                           "token_type_ids": [[0]]}},
               {"inputs": {"input_ids": [[2 ** 40]], "attention_mask": [[1]],
                           "token_type_ids": [[0]]}},
               {"inputs": {"input_ids": [[1]], "attention_mask": [[1], [1]],
                           "token_type_ids": [[0]]}},
               {"signature_name": 5, "instances": ["x"]},
               {"signature_name": "serving_text", "instances": [{"b64": "!!"}]},
               {"signature_name": "serving_text", "instances": [{"text": 1}]},
               {"signature_name": "serving_text", "instances": [None]},
               {"signature_name": "serving_text", "instances": ["x" * 200001]},
               {"signature_name": "serving_text", "instances": ["x"] * 9},  # over max batch
               {"examples": "x"}, {"examples": [1]}, {"unknown": 1}]
    cases = [("/v1/models/srv:predict", b, "POST") for b in bodies] + \
            [("/v1/models/srv:predict", json.dumps(o).encode(), "POST") for o in objects] + \
            [("/v1/models/srv:classify", json.dumps(o).encode(), "POST") for o in objects]
    paths = ["/v1/models/", "/v1/models/srv/versions/x", "/v1/models/srv/versions/-1",
             "/v1/models/srv:explode", "/v1/models/srv/labels/stable",
             "/v1/models/srv/metadata/x", "/v1/models/%00", "/v1/models/srv/versions/" + "9" * 40]
    cases += [(p, b"{}", "POST") for p in paths] + [(p, None, "GET") for p in paths]
    cases += [("/v1/models/srv:predict", None, "GET"), ("/v1/models/srv", b"{}", "POST")]
    while len(cases) < 240:  # random bytes and random JSON shapes
        n = int(rng.integers(1, 300))
        cases.append(("/v1/models/srv:predict", rng.bytes(n), "POST"))
        cases.append(("/v1/models/srv:predict", json.dumps(
            {"instances": rng.integers(-5, 5, size=int(rng.integers(1, 4)) * [2]).tolist()}
        ).encode(), "POST"))
    big = b'{"instances": ["' + b"x" * (17 << 20) + b'"]}'  # over the 16 MiB limit
    cases.append(("/v1/models/srv:predict", big, "POST"))
    statuses = []
    for path, raw, method in cases:
        try:
            status, body = server.call(path, raw=raw, method=method)
        except (ConnectionError, urllib.error.URLError) as e:  # the server closed on us
            status, body = f"connection {e}", None
        statuses.append(status)
        assert isinstance(status, int) and 400 <= status < 500, (path, raw[:80] if raw else raw,
                                                                 status, body)
        assert isinstance(body, dict) and body.get("error"), (path, status, body)
    assert len(statuses) >= 200 and 413 in statuses
    import socket  # a slow client: headers promise 100 bytes, 10 come, then nothing
    with socket.create_connection(("127.0.0.1", server.rest), timeout=30) as slow:
        slow.sendall(b"POST /v1/models/srv:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{\"instance")
        answer = slow.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and '"error"' in answer, answer
    status, body = server.call("/v1/models/srv:predict", {"signature_name": "serving_text",
                                                         "instances": SENTENCES[:1]})
    assert status == 200 and len(body["predictions"]) == 1
    encoded = base64.b64encode(SENTENCES[0].encode()).decode()  # the same, as binary
    for key in ("b64", "\\u0062\\u0036\\u0034"):  # also with the key's letters escaped
        raw = ('{"signature_name": "serving_text", "instances": [{"%s": "%s"}]}'
               % (key, encoded)).encode()
        status, same = server.call("/v1/models/srv:predict", raw=raw, method="POST")
        assert status == 200 and same["predictions"] == body["predictions"], (key, same)
    assert server.proc.poll() is None


def test_batching_replicas_capacity_and_graceful_stop(published):
    """Two replicas on two logical CPUs share the batch queue; concurrent requests are
    batched; a full queue answers 503 (never 500); SIGTERM finishes in-flight requests."""
    params = published / "tight_batching.txt"
    params.write_text("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 20000 }\n"
                      "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 2 }\n"
                      "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\n")
    s = Server("--model_name=srv", f"--model_base_path={published / 'saved_models' / 'srv'}",
               "--artifact=savedmodel", "--strategy=mirrored", "--logical_cpus=2",
               "--enable_batching", f"--batching_parameters_file={params}")
    try:
        assert "serving savedmodel (tf, 2 replica(s))" in "".join(s.lines)
        body = {"signature_name": "serving_text", "instances": SENTENCES[:1]}
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda _: s.call("/v1/models/srv:predict", body)[0],
                                     range(200)))
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 20, statuses
        assert 503 in statuses  # over capacity is refused, not queued without bound
        metrics = urllib.request.urlopen(s.url("/monitoring/prometheus/metrics")).read()
        sizes = {int(m.group(1)): int(m.group(2)) for m in re.finditer(
            rb'tfdeploy_batch_size_bucket\{queue="all",le="(\d+)"\} (\d+)', metrics)}
        assert sizes[1] < sizes[4], sizes  # some batches held more than one request
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(s.call, "/v1/models/srv:predict", {
                "signature_name": "serving_text", "instances": SENTENCES[:4]})
                for _ in range(4)]
            time.sleep(0.05)
            code, log = s.stop()
            done = [f.result()[0] for f in slow]
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert code == 0 and "stopped" in log
    assert all(status in (200, 503) for status in done) and 200 in done, done


def test_model_config_file_and_tf_serving_files(published):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from tfdeploy.serve.config import batching_proto_class

    root = published / "saved_models"
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((root / "models.config").read_text(), config)
    (entry,) = config.model_config_list.config
    assert entry.name == "srv" and entry.base_path == str(root / "srv")
    assert entry.model_platform == "tensorflow"
    batching = batching_proto_class()()
    text_format.Parse((root / "batching_parameters.txt").read_text(), batching)
    assert batching.max_batch_size.value == 8 and list(batching.allowed_batch_sizes) == \
        [1, 2, 4, 8]
    import yaml
    kserve = yaml.safe_load((root / "srv" / "kserve.yaml").read_text())
    assert kserve["kind"] == "InferenceService"
    assert kserve["spec"]["predictor"]["model"]["modelFormat"]["name"] == "tensorflow"

    # two names for one model, one pinned to version 1, through --model_config_file
    two = published / "two.config"
    two.write_text(f"""model_config_list {{
  config {{ name: "a" base_path: "{root / 'srv'}" model_platform: "tensorflow" }}
  config {{ name: "b" base_path: "{root / 'srv'}" model_platform: "tensorflow"
           model_version_policy {{ specific {{ versions: 1 }} }} }}
}}""")
    s = Server(f"--model_config_file={two}", "--artifact=onnx_fp32")
    try:
        for name in ("a", "b"):
            status, body = s.call(f"/v1/models/{name}:predict", {
                "signature_name": "serving_text", "instances": SENTENCES[:1]})
            assert status == 200, body
        assert s.call("/v1/models/b")[1]["model_version_status"][0]["version"] == "1"
    finally:
        s.stop()
    bad = run_serve("--model_config_file=" + str(published / "missing.config"))
    assert bad.returncode == 2 and "missing.config" in bad.stderr
    assert "Traceback" not in bad.stderr


def run_serve(*flags):
    return subprocess.run([sys.executable, "-m", "tfdeploy.serve", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_run_then_serve(published, tmp_path):
    """tfdeploy.run --serve: the run publishes, then serves what it published as the
    recipe's serve: section says, until SIGTERM."""
    recipe = tmp_path / "now.yaml"
    recipe.write_text(f"""base: {published / 'srv.yaml'}
name: now
stages: []
export: {{formats: [savedmodel, tflite_dynamic_int8], dir: {tmp_path / 'saved_models'}}}
benchmark: {{enabled: false}}
serve: {{port: 0, rest_api_port: 0, artifact: tflite_dynamic_int8, enable_batching: false}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "tfdeploy.run", str(recipe),
                             f"--output_dir={tmp_path / 'runs'}", "--serve"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, port = [], None
    for line in proc.stdout:
        lines.append(line)
        found = re.search(r"HTTP/REST API at:[\d.]+:(\d+)", line)
        if found:
            port = int(found.group(1))
            break
    assert port, "".join(lines)[-3000:]
    assert "serving tflite_dynamic_int8 (litert" in "".join(lines)
    body = json.dumps({"signature_name": "serving_text", "instances": SENTENCES[:2]}).encode()
    with urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/now:predict", data=body), timeout=60) as r:
        assert len(json.loads(r.read())["predictions"]) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0


def test_unbatched_request_runs_inline_only_when_alone():
    """Without batching, the only request in flight runs on the event loop's thread (no
    hand-offs); with others in flight it goes to the replicas' threads."""
    import asyncio
    import threading

    from tfdeploy.serve.batching import Direct

    class Servable:
        ragged, pad_values = set(), {}

        def run(self, batch):
            return {"thread": np.full(len(batch["x"]), threading.get_ident())}

    async def ask(alone):
        direct = Direct(Servable(), 1, idle=lambda: alone)
        try:
            parts = await direct.submit([{"x": np.zeros((2, 3))}])
        finally:
            direct.close()
        return int(parts[0]["thread"][0])

    loop_thread = threading.get_ident()
    assert asyncio.run(ask(True)) == loop_thread
    assert asyncio.run(ask(False)) != loop_thread


def test_batch_threads_take_the_next_batch_without_the_event_loop():
    """A batch thread that finishes takes the next waiting batch itself: with the event
    loop blocked, queued full batches still run back to back; each request gets its own
    rows (token ids padded with the model's pad value); close() runs what is queued."""
    import asyncio
    import threading

    from tfdeploy.serve.batching import Batcher
    from tfdeploy.serve.config import Batching

    class Servable:
        ragged, pad_values, buckets = {"ids"}, {"ids": 7}, ()

        def __init__(self):
            self.started, self.lock = [], threading.Lock()

        def run(self, batch):
            with self.lock:
                self.started.append(time.monotonic())
            time.sleep(0.02)
            return {"echo": batch["ids"].copy()}

    servable = Servable()
    params = Batching(max_batch_size=2, batch_timeout_micros=10_000_000,
                      max_enqueued_batches=10, num_batch_threads=1)

    async def main():
        batcher = Batcher(servable, params, 1)
        rows = [{"ids": np.full((1, n), n, np.int32)} for n in (1, 2, 3, 4, 5, 6, 1)]
        tasks = [asyncio.create_task(batcher.submit([r])) for r in rows]
        await asyncio.sleep(0)  # every request queued: three full batches, one open
        time.sleep(0.3)  # the loop is blocked: only the batch thread can start batches
        blocked_until = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=0.2)
        assert len(done) == 6 and len(pending) == 1  # the open batch waits for its timeout
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        return blocked_until, [t.result()[0]["echo"] for t in tasks]

    blocked_until, echoes = asyncio.run(main())
    assert len(servable.started) == 4 and all(t < blocked_until for t in servable.started[:3])
    assert [e.tolist() for e in echoes[:2]] == [[[1, 7]], [[2, 2]]]
    assert [e.tolist() for e in echoes[4:]] == [[[5, 5, 5, 5, 5, 7]], [[6] * 6], [[1]]]


def test_input_arrays_are_checked_against_the_signature():
    """Each kind of wrong input gets its own message; good input comes back as the
    signature's dtype."""
    from tfdeploy.serve.api import array
    from tfdeploy.serve.servable import RequestError

    ids = (np.int32, (None, None))
    good = array("ids", [[101, 7, 102]], *ids)
    assert good.dtype == np.int32 and good.tolist() == [[101, 7, 102]]
    assert array("x", [[0.5, 1.0]], np.float32, (None, 2)).dtype == np.float32
    wrong = {"not a rectangular array": [[1, 2], [3]],
             "got strings": [["a"]], "got booleans": [[True]], "got fractions": [[1.5]],
             "expected rank 2": [1, 2], "empty batch": np.zeros((0, 3), np.int64),
             "dimension 1 is 0": [[]], "values outside DT_INT32": [[2 ** 40]]}
    for message, value in wrong.items():
        with pytest.raises(RequestError, match=message):
            array("ids", value, *ids)
    with pytest.raises(RequestError, match="dimension 1 is 3, the signature wants 2"):
        array("x", [[1.0, 2.0, 3.0]], np.float32, (None, 2))
    with pytest.raises(RequestError, match="NaN or infinite"):
        array("x", np.array([[np.nan, 1.0]]), np.float32, (None, 2))
