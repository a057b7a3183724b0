"""TF Serving's REST API (``g3doc/api_rest.md``) on aiohttp.

``GET /v1/models/{name}[/versions/{n}]`` status, ``.../metadata``, ``POST ...:predict``
(row ``instances`` or columnar ``inputs``), ``...:classify``; errors are ``{"error": ...}``
with TF Serving's status codes. Every failure is caught here: a client never sees a
traceback and the server keeps serving.
"""
import asyncio
import base64
import orjson
import re
import time

from aiohttp import web

from tfdeploy.serve import api
from tfdeploy.serve.batching import Unavailable
from tfdeploy.serve.manager import NotFound
from tfdeploy.serve.servable import RequestError

ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                   r"(?:/(?P<metadata>metadata)|:(?P<method>[A-Za-z]+))?$")


class HttpError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def respond(data, status=200):
    """JSON (orjson: numpy arrays written directly, no per-float Python objects)."""
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
                        status=status, content_type="application/json")


def error(status, message):
    return respond({"error": message}, status)


def make_app(manager, metrics, max_request_bytes, timeout_seconds=30.0):
    app = web.Application(client_max_size=max_request_bytes)

    async def metrics_page(request):
        return web.Response(text=metrics.text(), content_type="text/plain")

    async def models(request):
        started = time.perf_counter()
        model_name, kind, status = "", "unknown", 500
        metrics.in_flight += 1
        try:
            match = ROUTE.match(request.path)
            if not match:
                raise HttpError(404, f"Malformed request: {request.method} {request.path}")
            model_name = match["name"] if match["name"] in manager.models else ""
            kind = match["method"] or ("metadata" if match["metadata"] else "status")
            response = await dispatch(manager, request, match, kind, timeout_seconds)
            status = response.status
            return response
        except HttpError as e:
            status = e.status
            return error(e.status, str(e))
        except web.HTTPRequestEntityTooLarge:
            status = 413
            return error(413, f"request body over the {max_request_bytes}-byte limit")
        except Exception as e:  # noqa: BLE001 — never a traceback to the client
            status = 500
            return error(500, f"internal error: {type(e).__name__}")
        finally:
            metrics.in_flight -= 1
            metrics.request(model_name, kind, status, (time.perf_counter() - started) * 1e3)

    app.router.add_get("/monitoring/prometheus/metrics", metrics_page)
    app.router.add_route("*", "/v1/models/{tail:.*}", models)
    return app


async def dispatch(manager, request, match, kind, timeout_seconds):
    version = parse_version(match["version"])
    if match["label"]:
        raise HttpError(404, f"version label {match['label']!r}: no labels are assigned")
    try:
        if kind == "status":
            only_get(request)
            rows = api.status(manager, match["name"], version)
            return respond({"model_version_status": [
                {"version": str(n), "state": state,
                 "status": {"error_code": "UNKNOWN" if err else "OK", "error_message": err}}
                for n, state, err in rows]})
        if kind == "metadata":
            only_get(request)
            with manager.model(match["name"]).using(version) as v:
                return respond(metadata_json(match["name"], v))
        if request.method != "POST":
            raise HttpError(405, f"{kind} needs POST")
        body = await read_json(request, timeout_seconds)
        if kind == "predict":
            return respond(await predict(manager, match["name"], version, body))
        if kind in ("classify", "regress"):
            return respond(await examples_method(manager, match["name"], version, body, kind))
        raise HttpError(404, f"unknown method :{kind} (predict, classify, regress)")
    except NotFound as e:
        raise HttpError(404, str(e)) from None
    except RequestError as e:
        raise HttpError(400, str(e)) from None
    except Unavailable as e:
        raise HttpError(503, str(e)) from None


def only_get(request):
    if request.method != "GET":
        raise HttpError(405, f"{request.method} is not allowed here; use GET")


def parse_version(text):
    if text is None:
        return None
    if not text.isdigit() or len(text) > 18:
        raise HttpError(400, f"version {text!r} is not a number")
    return int(text)


async def read_json(request, timeout_seconds):
    try:  # a client that sends its body slowly does not hold the request forever
        if request.content.is_eof():  # all of it arrived with the headers: no timer
            raw = await request.read()  # (wait_for costs a task per request)
        else:
            raw = await asyncio.wait_for(request.read(), timeout_seconds)
    except asyncio.TimeoutError:
        raise HttpError(408, f"the request body did not arrive within {timeout_seconds:g} "
                             f"s") from None
    if not raw:
        raise HttpError(400, "JSON Parse error: the body is empty")
    try:  # orjson refuses bad UTF-8, NaN, Infinity, overflowing numbers, nesting over 1024
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if not utf8(raw):
            raise HttpError(400, "JSON Parse error: the body is not valid UTF-8") from None
        raise HttpError(400, f"JSON Parse error: {str(e)[:200]}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "JSON Value: the body must be a JSON object")
    return body


def utf8(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def decode_b64(value):
    """TF Serving's binary form ``{"b64": "..."}`` inside strings, anywhere in a value."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError("a JSON object inside a value must be {\"b64\": \"...\"}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise RequestError("b64: not valid base64") from None
    if isinstance(value, list):
        return [decode_b64(v) for v in value]
    return value


async def predict(manager, name, version, body):
    sig_name = signature_name(body)
    row_format = request_format(body)
    with manager.model(name).using(version) as v:
        sig_name, sig = api.signature(v.servable, sig_name)
        names = list(sig.inputs)
    inputs = rows_to_columns(body["instances"], names) if row_format else \
        columns(body["inputs"], names)
    outputs, _ = await api.predict(manager, name, version, sig_name, inputs)
    if row_format:  # one output: its values; several: an object per row (as TF Serving)
        names = list(outputs)
        if len(names) == 1:
            return {"predictions": outputs[names[0]]}
        count = len(outputs[names[0]])
        return {"predictions": [{k: outputs[k][i] for k in names} for i in range(count)]}
    return {"outputs": outputs if len(outputs) > 1 else next(iter(outputs.values()))}


def signature_name(body):
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise RequestError("signature_name must be a string")
    return name


def request_format(body):
    allowed = {"signature_name", "instances", "inputs"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise RequestError(f"unknown keys {unknown}; a predict request has signature_name "
                           f"and one of instances (row format) or inputs (columnar)")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("Missing 'inputs' or 'instances' key" if "instances" not in body
                           else "Request body must have exactly one of 'instances' or "
                                "'inputs', not both")
    return "instances" in body


def rows_to_columns(instances, names):
    """Row format: a list of instances, each ``{input: value}`` (or the bare value when
    the signature has one input)."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("instances: expected a non-empty list")
    columns_ = {n: [] for n in names}
    for i, instance in enumerate(instances):
        if isinstance(instance, dict) and set(instance) != {"b64"}:
            if set(instance) != set(names):
                raise RequestError(f"instances[{i}]: keys {sorted(instance)} do not match "
                                   f"the signature's inputs {names}")
            for n in names:
                columns_[n].append(decode_b64(instance[n]))
        elif len(names) == 1:
            columns_[names[0]].append(decode_b64(instance))
        else:
            raise RequestError(f"instances[{i}]: the signature has inputs {names}; each "
                               f"instance must be an object with those keys")
    return columns_


def columns(inputs, names):
    """Columnar format: ``{input: batch}`` (or the bare batch for a one-input signature)."""
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        return {k: decode_b64(v) for k, v in inputs.items()}
    if len(names) != 1:
        raise RequestError(f"inputs: the signature has inputs {names}; send an object "
                           f"with those keys")
    return {names[0]: decode_b64(inputs)}


async def examples_method(manager, name, version, body, method):
    """``:classify`` -> ``{"results": [[[label, score], ...], ...]}``; ``:regress`` ->
    ``{"results": [value, ...]}`` (TF Serving's REST API), from ``examples``."""
    unknown = sorted(set(body) - {"signature_name", "examples", "context"})
    if unknown:
        raise RequestError(f"unknown keys {unknown}; a {method} request has examples "
                           f"(and optionally signature_name, context)")
    api.check_method(manager, name, version, method)
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples or \
            not all(isinstance(e, dict) for e in examples):
        raise RequestError("examples: expected a non-empty list of objects")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise RequestError("context: expected an object")
    merged = [{**context, **e} for e in examples]
    with manager.model(name).using(version) as v:
        sig_name, sig = api.classify_signature(v.servable, signature_name(body), merged)
    inputs = rows_to_columns(merged, list(sig.inputs))
    if method == "regress":
        results, _ = await api.regress(manager, name, version, sig_name, inputs)
        return {"results": results}
    results, _ = await api.classify(manager, name, version, sig_name, inputs)
    return {"results": [[[label, score] for label, score in row] for row in results]}


def metadata_json(name, v):
    sigs = {}
    for sig_name, sig in api.metadata(v.servable).items():
        sigs[sig_name] = {
            "inputs": {k: tensor_info(k, dtype, shape, sig_name)
                       for k, (dtype, shape) in sig["inputs"].items()},
            "outputs": {k: tensor_info(k, dtype, shape, sig_name)
                        for k, (dtype, shape) in sig["outputs"].items()},
            "method_name": sig["method"]}
    return {"model_spec": {"name": name, "signature_name": "", "version": str(v.number)},
            "metadata": {"signature_def": {
                "signature_def": sigs,
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap"}}}


def tensor_info(name, dtype, shape, sig_name):
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in shape]
    return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False},
            "name": f"{sig_name}_{name}:0"}


