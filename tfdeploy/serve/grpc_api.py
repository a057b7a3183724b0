"""TF Serving's gRPC services from the tensorflow-serving-api protos:
``PredictionService`` (Predict, Classify, Regress, GetModelMetadata) and
``ModelService.GetModelStatus``, so TF Serving's own Python client works unchanged."""
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.framework import tensor_shape_pb2, types_pb2

from tfdeploy.serve import api
from tfdeploy.serve.batching import Unavailable
from tfdeploy.serve.manager import NotFound
from tfdeploy.serve.servable import RequestError

CODES = ((NotFound, grpc.StatusCode.NOT_FOUND), (RequestError, grpc.StatusCode.INVALID_ARGUMENT),
         (Unavailable, grpc.StatusCode.UNAVAILABLE))


async def guarded(context, metrics, model, what, call):
    """Run ``call``; map our errors to gRPC codes (never a traceback to the client)."""
    import time

    started, code = time.perf_counter(), "OK"
    metrics.in_flight += 1
    try:
        return await call()
    except Exception as e:  # noqa: BLE001
        code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}"
        for kind, mapped in CODES:
            if isinstance(e, kind):
                code, message = mapped, str(e)
        await context.abort(code, message)
    finally:
        metrics.in_flight -= 1
        metrics.request(model, f"grpc_{what}", code if code == "OK" else code.name,
                        (time.perf_counter() - started) * 1e3)


def version_of(spec):
    if spec.HasField("version"):
        return int(spec.version.value)
    if spec.version_label:
        raise NotFound(f"version label {spec.version_label!r}: no labels are assigned")
    return None


def tensors_in(inputs):
    try:
        return {k: tf.make_ndarray(v) for k, v in inputs.items()}
    except (TypeError, ValueError) as e:
        raise RequestError(f"inputs: cannot read the TensorProto: {e}") from None


class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager, metrics):
        self.manager, self.metrics = manager, metrics

    def known(self, name):
        return name if name in self.manager.models else ""

    async def Predict(self, request, context):
        async def call():
            spec = request.model_spec
            outputs, number = await api.predict(self.manager, spec.name, version_of(spec),
                                                spec.signature_name, tensors_in(request.inputs))
            wanted = set(request.output_filter) or set(outputs)
            unknown = wanted - set(outputs)
            if unknown:
                raise RequestError(f"output_filter: unknown outputs {sorted(unknown)}")
            response = predict_pb2.PredictResponse()
            fill_spec(response.model_spec, spec.name, number, spec.signature_name)
            for key in sorted(wanted):
                response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
            return response
        return await guarded(context, self.metrics, self.known(request.model_spec.name),
                             "predict", call)

    async def examples(self, request, method):
        """(signature name, signature inputs) of a Classify/Regress request's tf.Examples,
        after refusing the method on a model of the other kind."""
        spec = request.model_spec
        examples = examples_of(request.input)
        api.check_method(self.manager, spec.name, version_of(spec), method)
        with self.manager.model(spec.name).using(version_of(spec)) as v:
            sig_name, sig = api.classify_signature(v.servable, spec.signature_name, examples)
            return sig_name, example_inputs(examples, sig)

    async def Classify(self, request, context):
        async def call():
            spec = request.model_spec
            sig_name, inputs = await self.examples(request, "classify")
            results, number = await api.classify(self.manager, spec.name, version_of(spec),
                                                 sig_name, inputs)
            response = classification_pb2.ClassificationResponse()
            fill_spec(response.model_spec, spec.name, number, sig_name)
            for row in results:
                classes = response.result.classifications.add()
                for label, score in row:
                    classes.classes.add(label=label, score=score)
            return response
        return await guarded(context, self.metrics, self.known(request.model_spec.name),
                             "classify", call)

    async def Regress(self, request, context):
        async def call():
            spec = request.model_spec
            sig_name, inputs = await self.examples(request, "regress")
            values, number = await api.regress(self.manager, spec.name, version_of(spec),
                                               sig_name, inputs)
            response = regression_pb2.RegressionResponse()
            fill_spec(response.model_spec, spec.name, number, sig_name)
            for value in values:
                response.result.regressions.add(value=value)
            return response
        return await guarded(context, self.metrics, self.known(request.model_spec.name),
                             "regress", call)

    async def GetModelMetadata(self, request, context):
        async def call():
            spec = request.model_spec
            if list(request.metadata_field) != ["signature_def"]:
                raise RequestError("metadata_field must be exactly [\"signature_def\"]")
            with self.manager.model(spec.name).using(version_of(spec)) as v:
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for name, sig in api.metadata(v.servable).items():
                    signature_map.signature_def[name].CopyFrom(signature_def(name, sig))
                response = get_model_metadata_pb2.GetModelMetadataResponse()
                fill_spec(response.model_spec, spec.name, v.number, "")
            response.metadata["signature_def"].Pack(signature_map)
            return response
        return await guarded(context, self.metrics, self.known(request.model_spec.name),
                             "metadata", call)


class ModelStatus(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager, metrics):
        self.manager, self.metrics = manager, metrics

    async def GetModelStatus(self, request, context):
        async def call():
            spec = request.model_spec
            rows = api.status(self.manager, spec.name, version_of(spec))
            response = get_model_status_pb2.GetModelStatusResponse()
            states = get_model_status_pb2.ModelVersionStatus.State
            for number, state, err in rows:
                status = response.model_version_status.add(version=number,
                                                           state=states.Value(state))
                status.status.error_code = 2 if err else 0  # UNKNOWN / OK
                status.status.error_message = err
            return response
        name = request.model_spec.name
        return await guarded(context, self.metrics, name if name in self.manager.models
                             else "", "status", call)


def fill_spec(spec, name, version, signature_name):
    spec.name = name
    spec.version.value = version
    spec.signature_name = signature_name or "serving_default"


DTYPES = {"DT_INT32": types_pb2.DT_INT32, "DT_INT64": types_pb2.DT_INT64,
          "DT_FLOAT": types_pb2.DT_FLOAT, "DT_DOUBLE": types_pb2.DT_DOUBLE,
          "DT_STRING": types_pb2.DT_STRING, "DT_UINT8": types_pb2.DT_UINT8}


def signature_def(name, sig):
    out = meta_graph_pb2.SignatureDef(method_name=sig["method"])
    for side, target in (("inputs", out.inputs), ("outputs", out.outputs)):
        for key, (dtype, shape) in sig[side].items():
            info = target[key]
            info.name = f"{name}_{key}:0"
            info.dtype = DTYPES.get(dtype, types_pb2.DT_INVALID)
            info.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(dim=[
                tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d)
                for d in shape]))
    return out


def examples_of(request_input):
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples, context = request_input.example_list.examples, None
    elif kind == "example_list_with_context":
        examples = request_input.example_list_with_context.examples
        context = request_input.example_list_with_context.context
    else:
        raise RequestError("input: expected example_list or example_list_with_context")
    if not examples:
        raise RequestError("input: no examples")
    base = features(context) if context is not None else {}
    return [{**base, **features(e)} for e in examples]


def features(example):
    out = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        out[key] = values
    return out


def example_inputs(examples, sig):
    """Examples' features -> signature inputs (each feature flattened per example)."""
    inputs = {}
    for name, (dtype, shape) in sig.inputs.items():
        column = []
        for i, e in enumerate(examples):
            if name not in e:
                raise RequestError(f"examples[{i}]: no feature {name!r}")
            value = e[name]
            if dtype is np.object_:
                if len(value) != 1:
                    raise RequestError(f"examples[{i}].{name}: expected one string")
                column.append(value[0])
            else:
                fixed = [d for d in shape[1:]]
                if None in fixed:
                    column.append(value)
                else:
                    if len(value) != int(np.prod(fixed)):
                        raise RequestError(f"examples[{i}].{name}: {len(value)} values, the "
                                           f"signature wants {int(np.prod(fixed))}")
                    column.append(np.reshape(np.asarray(value), fixed).tolist())
        inputs[name] = column
    return inputs
