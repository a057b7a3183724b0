"""Serving settings: the recipe's ``serve:`` section, and TF Serving's own config files.

The export writes what a real TF Serving needs beside the versions it publishes:
``<export.dir>/models.config`` (a ``ModelServerConfig`` text proto listing every model
there), ``<export.dir>/batching_parameters.txt`` (TF Serving's ``BatchingParameters`` text
proto) and ``<export.dir>/<name>/kserve.yaml`` (a KServe ``InferenceService`` with the
TF Serving runtime). ``tfdeploy.serve`` reads the same two text protos.
"""
import dataclasses
import os
from typing import List, Literal

from tfdeploy import files
from tfdeploy.recipe.fields import field

CONFIG_LIMIT = 16 << 20  # a server config file is a few KiB


@dataclasses.dataclass(kw_only=True)
class Batching:
    max_batch_size: int = field(32, ge=1, le=4096, doc="Rows per batch at most.")
    batch_timeout_micros: int = field(2000, ge=0, le=10_000_000,
                                      doc="How long a batch waits to fill.")
    max_enqueued_batches: int = field(64, ge=1, le=100_000,
                                      doc="Queued batches at most; beyond: 503.")
    num_batch_threads: int = field(0, ge=0, le=256, doc="Batches run at once; 0 = one per "
                                                        "replica.")
    allowed_batch_sizes: List[int] = field(factory=list, ge=1, le=4096, max_items=64,
                                           doc="Pad each batch up to one of these sizes "
                                               "(increasing, last = max_batch_size).")

    def check(self):
        sizes = self.allowed_batch_sizes
        if sizes and (sorted(set(sizes)) != sizes or sizes[-1] != self.max_batch_size):
            yield ("allowed_batch_sizes", "must increase and end at max_batch_size")


@dataclasses.dataclass(kw_only=True)
class Serve:
    artifact: str = field("auto", pattern=r"[a-z0-9_]+", max_length=64,
                          doc="What to serve: an export format name, or auto = the fastest "
                              "measured artifact of the version (all passed the gates).")
    port: int = field(8500, ge=0, le=65535, doc="gRPC port; 0 = a free one (printed).")
    rest_api_port: int = field(8501, ge=0, le=65535, doc="REST port; 0 = a free one.")
    host: str = field("127.0.0.1", max_length=255, doc="Address to listen on.")
    enable_batching: bool = field(True, doc="Batch concurrent requests together.")
    batching: Batching = field(factory=Batching, doc="TF Serving's batching parameters.")
    replicas: int = field(1, ge=1, le=64, doc="Model copies sharing the batch queue (one "
                                              "per GPU under mirrored).")
    threads: int = field(0, ge=0, le=256, doc="Threads per replica; 0 = cores / replicas.")
    version_policy: Literal["latest", "all", "specific"] = field(
        "latest", doc="Versions served: the latest N, all, or those listed.")
    num_versions: int = field(1, ge=1, le=100, doc="N for latest.")
    versions: List[int] = field(factory=list, ge=1, max_items=100, doc="For specific.")
    poll_seconds: float = field(1.0, ge=0.05, le=3600, doc="How often new versions are "
                                                           "looked for.")
    max_request_bytes: int = field(16 << 20, ge=1024, le=1 << 30,
                                   doc="Larger request bodies get 413.")


def batching_proto_class():
    """TF Serving's ``BatchingParameters`` message (session_bundle_config.proto), which the
    tensorflow-serving-api wheel does not ship: the same field names, numbers and types."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.Default()
    name = "tensorflow.serving.BatchingParameters"
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="tfdeploy/batching_parameters.proto", package="tensorflow.serving",
        syntax="proto3", dependency=[wrappers_pb2.DESCRIPTOR.name])
    msg = proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for number, (fname, kind) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("thread_pool_name", "StringValue"), ("num_batch_threads", "Int64Value"),
            ("max_enqueued_batches", "Int64Value")], start=1):
        msg.field.add(name=fname, number=number, type=F.TYPE_MESSAGE,
                      type_name=f".google.protobuf.{kind}", label=F.LABEL_OPTIONAL)
    msg.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                  label=F.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                  label=F.LABEL_OPTIONAL)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def batching_text(b: Batching, replicas=1):
    msg = batching_proto_class()()
    msg.max_batch_size.value = b.max_batch_size
    msg.batch_timeout_micros.value = b.batch_timeout_micros
    msg.max_enqueued_batches.value = b.max_enqueued_batches
    msg.num_batch_threads.value = b.num_batch_threads or replicas
    msg.allowed_batch_sizes.extend(b.allowed_batch_sizes)
    msg.pad_variable_length_inputs = True
    from google.protobuf import text_format
    return text_format.MessageToString(msg)


def read_batching(path):
    """A ``--batching_parameters_file``: Batching, or ValueError naming what is wrong."""
    from google.protobuf import text_format

    msg = batching_proto_class()()
    text = files.read_text(path, "--batching_parameters_file", ValueError, CONFIG_LIMIT)
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise ValueError(f"--batching_parameters_file {path}: {e}") from None
    b = Batching()
    for fname in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                  "num_batch_threads"):
        if msg.HasField(fname):
            setattr(b, fname, int(getattr(msg, fname).value))
    b.allowed_batch_sizes = list(msg.allowed_batch_sizes)
    return b


def models_config_text(root):
    """A ModelServerConfig listing every model folder under ``root`` (absolute paths)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2 as pb

    config = pb.ModelServerConfig()
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder) and not name.startswith(".") and any(
                d.isdigit() for d in os.listdir(folder)):
            config.model_config_list.config.add(
                name=name, base_path=os.path.abspath(folder), model_platform="tensorflow")
    return text_format.MessageToString(config)


def read_models_config(path):
    """[(name, base_path, version policy dict)] from a ``--model_config_file``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2 as pb

    config = pb.ModelServerConfig()
    text = files.read_text(path, "--model_config_file", ValueError, CONFIG_LIMIT)
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"--model_config_file {path}: {e}") from None
    out = []
    for model in config.model_config_list.config:
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        spec = {"latest": {"policy": "latest",
                           "num_versions": policy.latest.num_versions or 1},
                "all": {"policy": "all"},
                "specific": {"policy": "specific",
                             "versions": list(policy.specific.versions)}}[kind]
        base = model.base_path if os.path.isabs(model.base_path) else os.path.join(
            os.path.dirname(os.path.abspath(path)), model.base_path)
        out.append((model.name, base, spec))
    if not out:
        raise ValueError(f"--model_config_file {path}: no model_config_list entries")
    return out


KSERVE = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {k8s_name}
spec:
  predictor:
    model:
      modelFormat:
        name: tensorflow
      runtime: kserve-tensorflow-serving
      # Copy {root}/{name}/ (its numbered versions) to this bucket first.
      storageUri: gs://YOUR-BUCKET/{name}
"""


def write_all(root, recipe):
    """Rewrite TF Serving's config files for everything under ``root`` (under the
    publish lock's folder, after a version appeared)."""
    from tfdeploy.rundir import atomic_write_text

    atomic_write_text(os.path.join(root, "models.config"), models_config_text(root))
    atomic_write_text(os.path.join(root, "batching_parameters.txt"),
                      batching_text(recipe.serve.batching, recipe.serve.replicas))
    atomic_write_text(os.path.join(root, recipe.name, "kserve.yaml"), KSERVE.format(
        k8s_name=recipe.name.lower().replace("_", "-"), root=root, name=recipe.name))
