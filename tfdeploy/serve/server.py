"""Assemble and run the server: models from flags or a config file, REST (aiohttp) and
gRPC (grpc.aio) on one event loop, version polling, graceful shutdown on SIGTERM."""
import asyncio
import dataclasses
import signal

from tfdeploy.serve.config import Batching
from tfdeploy.serve.manager import Manager, Model, ServeOptions
from tfdeploy.serve.metrics import Metrics


@dataclasses.dataclass
class Settings:
    models: list                 # [(name, base_path, policy dict)]
    host: str = "127.0.0.1"
    port: int = 8500
    rest_api_port: int = 8501
    artifact: str = "auto"
    enable_batching: bool = True
    batching: Batching = dataclasses.field(default_factory=Batching)
    replicas: int = 1
    threads: int = 0
    devices: tuple = ()
    poll_seconds: float = 1.0
    max_request_bytes: int = 16 << 20
    grace_seconds: float = 10.0
    timeout_seconds: float = 30.0


def settings_for_recipe(recipe):
    """What ``tfdeploy.run --serve`` serves: the recipe's published versions, as its
    ``serve:`` section and ``distribution`` say."""
    import os

    cfg = recipe.serve
    policy = {"policy": cfg.version_policy, "num_versions": cfg.num_versions,
              "versions": list(cfg.versions)}
    strategy = "mirrored" if recipe.distribution.strategy == "mirrored" else "cpu"
    replicas, devices = serving_devices(strategy, cfg.replicas,
                                        recipe.distribution.logical_cpus)
    return Settings(models=[(recipe.name, os.path.abspath(os.path.join(
        recipe.export.dir, recipe.name)), policy)], host=cfg.host, port=cfg.port,
        rest_api_port=cfg.rest_api_port, artifact=cfg.artifact,
        enable_batching=cfg.enable_batching, batching=cfg.batching, replicas=replicas,
        threads=cfg.threads, devices=devices, poll_seconds=cfg.poll_seconds,
        max_request_bytes=cfg.max_request_bytes)


def serving_devices(strategy, replicas, logical_cpus=0):
    """(replica count, devices): one replica per GPU under mirrored; on a CPU-only
    machine with ``logical_cpus`` the CPU is split and each replica gets one part."""
    if strategy != "mirrored":
        return replicas, ()
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):  # (listing logical ones would fix them)
        gpus = tf.config.list_logical_devices("GPU")
        return len(gpus), tuple(d.name for d in gpus)
    if logical_cpus > 1:
        try:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        except RuntimeError:  # already split (by the run this serves): use what is there
            pass
        cpus = tf.config.list_logical_devices("CPU")
        return len(cpus), tuple(d.name for d in cpus)
    return replicas, ()


async def serve(settings, ready=None):
    from aiohttp import web
    import grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from tfdeploy.serve import grpc_api, rest

    metrics = Metrics()
    options = ServeOptions(settings.artifact, settings.replicas, settings.threads,
                           settings.enable_batching, settings.batching, settings.devices,
                           metrics.batch, metrics.idle)
    manager = Manager([Model(n, p, policy, options) for n, p, policy in settings.models],
                      settings.poll_seconds)
    await manager.refresh()
    for model in manager.models.values():
        if not any(v.state == "AVAILABLE" for v in model.versions.values()):
            print(f"model {model.name}: no version available yet under {model.base_path}; "
                  f"waiting for one", flush=True)

    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_request_bytes)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        grpc_api.Prediction(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        grpc_api.ModelStatus(manager, metrics), server)
    grpc_port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()

    app = rest.make_app(manager, metrics, settings.max_request_bytes,
                        settings.timeout_seconds)
    runner = web.AppRunner(app, shutdown_timeout=settings.grace_seconds, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.rest_api_port)
    await site.start()
    rest_port = runner.addresses[0][1]
    print(f"Running gRPC ModelServer at {settings.host}:{grpc_port} ...", flush=True)
    print(f"Exporting HTTP/REST API at:{settings.host}:{rest_port} ...", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready:
        ready(grpc_port, rest_port)
    poller = asyncio.create_task(manager.poll_forever())
    await stop.wait()
    print("shutting down: finishing in-flight requests", flush=True)
    poller.cancel()
    await site.stop()       # no new connections; in-flight requests finish
    await server.stop(settings.grace_seconds)
    await runner.cleanup()
    await loop.run_in_executor(None, manager.close)
    print("stopped", flush=True)


def run(settings):
    import uvloop  # libuv's loop: less latency per request than asyncio's own

    uvloop.run(serve(settings))
