"""``python -m tfdeploy.serve``: TF Serving's ``tensorflow_model_server`` flags, over
every artifact of a published version (SavedModel, TFLite, ONNX).

    python -m tfdeploy.serve --model_name=bert --model_base_path=saved_models/bert \\
        --rest_api_port=8501 --port=8500 [--artifact=auto] [--enable_batching]
"""
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("port", 8500, "gRPC port; 0 = a free port (printed).")
flags.DEFINE_integer("rest_api_port", 8501, "REST port; 0 = a free port (printed).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0 for all).")
flags.DEFINE_string("model_name", "default", "Name of the model (with --model_base_path).")
flags.DEFINE_string("model_base_path", "", "Folder of numbered versions of one model.")
flags.DEFINE_string("model_config_file", "", "ModelServerConfig text proto: several models "
                                             "and their version policies.")
flags.DEFINE_bool("enable_batching", False, "Batch concurrent requests together.")
flags.DEFINE_string("batching_parameters_file", "", "BatchingParameters text proto.")
flags.DEFINE_integer("file_system_poll_wait_seconds", 1, "How often to look for new "
                                                         "versions.")
flags.DEFINE_string("artifact", "auto", "Artifact to serve (savedmodel, tflite_int8, "
                                        "onnx_fp32, ...) or auto: the fastest measured one.")
flags.DEFINE_integer("replicas", 1, "Model copies sharing the batch queue.")
flags.DEFINE_integer("threads", 0, "Threads per replica; 0 = cores / replicas.")
flags.DEFINE_enum("strategy", "cpu", ["cpu", "mirrored"], "mirrored: one replica per GPU "
                                                          "(or per logical CPU).")
flags.DEFINE_integer("logical_cpus", 0, "Under mirrored without GPUs: split the CPU into "
                                        "this many devices, one replica each.")
flags.DEFINE_integer("max_request_bytes", 16 << 20, "Larger request bodies get 413.")
flags.DEFINE_integer("rest_api_timeout_in_ms", 30000, "A request body that has not arrived "
                                                      "by then gets 408.")


def settings_from_flags():
    from tfdeploy.serve import config
    from tfdeploy.serve.server import Settings, serving_devices

    if bool(FLAGS.model_base_path) == bool(FLAGS.model_config_file):
        raise ValueError("give exactly one of --model_base_path (with --model_name) or "
                         "--model_config_file")
    if FLAGS.model_config_file:
        models = config.read_models_config(FLAGS.model_config_file)
    else:
        models = [(FLAGS.model_name, os.path.abspath(FLAGS.model_base_path),
                   {"policy": "latest", "num_versions": 1})]
    for name, base, _ in models:
        if not os.path.isdir(base):
            raise ValueError(f"model {name}: base path {base} is not a folder")
    batching = config.read_batching(FLAGS.batching_parameters_file) \
        if FLAGS.batching_parameters_file else config.Batching()
    replicas, devices = serving_devices(FLAGS.strategy, FLAGS.replicas, FLAGS.logical_cpus)
    return Settings(models=models, host=FLAGS.host, port=FLAGS.port,
                    rest_api_port=FLAGS.rest_api_port, artifact=FLAGS.artifact,
                    enable_batching=FLAGS.enable_batching, batching=batching,
                    replicas=replicas, threads=FLAGS.threads, devices=devices,
                    poll_seconds=FLAGS.file_system_poll_wait_seconds,
                    max_request_bytes=FLAGS.max_request_bytes,
                    timeout_seconds=FLAGS.rest_api_timeout_in_ms / 1000)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tfdeploy  # noqa: F401  (pins Keras 2 before TensorFlow loads)
    from tfdeploy.serve.server import run

    try:
        settings = settings_from_flags()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run(settings)
    return 0


def entry():
    app.run(main)


if __name__ == "__main__":
    entry()
