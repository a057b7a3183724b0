"""The distribution-strategy layer: one recipe field decides where tuning and inference run.

Everything that creates variables (model build, compile, optimizer) happens inside
``strategy.scope()``; datasets are batched with the *global* batch size
(per-replica batch x replicas) and Keras distributes them.
"""
import json
import os

import tensorflow as tf

from tfdeploy.errors import TfdeployError


def split_cpu(n):
    """Split the physical CPU into ``n`` logical devices (before TF initialises devices)."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        # Already initialised (e.g. a second run in one process): fine if the split matches.
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise TfdeployError(f"distribution.logical_cpus: {n} requested but TensorFlow was "
                                f"already initialised with {have} logical CPU(s)") from None


def _cross_device_ops(name, gpus):
    if name == "nccl" or (name == "auto" and gpus):
        return tf.distribute.NcclAllReduce()
    if name == "hierarchical_copy":
        return tf.distribute.HierarchicalCopyAllReduce()
    return tf.distribute.ReductionToOneDevice()


def _check_devices(devices):
    known = {d.name.lower().replace("/job:localhost/replica:0/task:0", "")
             for d in tf.config.list_logical_devices()}
    known = {k.replace("/device:", "/") for k in known}
    for device in devices:
        name = device.lower().replace("/device:", "/")
        if name not in known:
            raise TfdeployError(f"distribution.devices: {device!r} does not exist here "
                                f"(available: {', '.join(sorted(known))})")


def parse_tf_config(text=None):
    """Validate TF_CONFIG for multi-worker training; return the parsed dict."""
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise TfdeployError("multi_worker needs TF_CONFIG (cluster spec and this task) in "
                            "the environment")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise TfdeployError(f"TF_CONFIG is not valid JSON: {e.msg} at char {e.pos}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise TfdeployError("TF_CONFIG: 'cluster' must map job names to address lists")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise TfdeployError("TF_CONFIG: 'task' must have 'type' and 'index'")
    jobs = cluster.get(task["type"])
    if not isinstance(jobs, list) or not isinstance(task["index"], int) \
            or not 0 <= task["index"] < len(jobs):
        raise TfdeployError(f"TF_CONFIG: task {task['type']}:{task['index']} is not in the "
                            f"cluster {sorted(cluster)}")
    return config


def _tpu(address):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        tried = f"TPU {address!r}" if address else "a local TPU and the TPU_NAME setting"
        raise TfdeployError(f"distribution.strategy tpu: no TPU reachable (tried {tried}: "
                            f"{str(e).splitlines()[0]})") from None
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker(cfg):
    parse_tf_config()
    implementation = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(
        implementation={"auto": implementation.AUTO, "ring": implementation.RING,
                        "nccl": implementation.NCCL}[cfg.communication])
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _mixed_precision(policy, kind):
    import tf_keras as keras

    if policy == "auto":
        policy = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16"}.get(kind, "none")
    if policy != "none":
        keras.mixed_precision.set_global_policy(policy)
    return policy


def create(cfg, override=None):
    """(strategy, description dict) for a Distribution config; clear errors before work."""
    name = override or cfg.strategy
    if name == "multi_worker":
        # Collectives must be configured before TensorFlow initialises its devices.
        strategy = _multi_worker(cfg)
        kind = "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
        policy = _mixed_precision(cfg.mixed_precision, kind)
        return strategy, {"strategy": name, "class": type(strategy).__name__,
                          "device_kind": kind, "replicas": strategy.num_replicas_in_sync,
                          "mixed_precision": policy, "devices": _devices(strategy),
                          "workers": len(parse_tf_config()["cluster"].get("worker", [])) +
                          len(parse_tf_config()["cluster"].get("chief", []))}
    split_cpu(cfg.logical_cpus)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    if cfg.devices:
        _check_devices(cfg.devices)
    kind = "cpu"
    if name == "auto":
        try:
            strategy, kind = _tpu(cfg.tpu), "tpu"
            name = "tpu"
        except TfdeployError:
            name = "mirrored" if gpus or cfg.logical_cpus > 1 else "cpu"
    if name == "cpu":
        # The default strategy: plain Keras on this process's devices (CPU here).
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        device = (cfg.devices or gpus or ["/cpu:0"])[0]
        strategy, kind = tf.distribute.OneDeviceStrategy(device), "gpu" if "gpu" in \
            device.lower() else "cpu"
    elif name == "mirrored":
        devices = cfg.devices or gpus or cpus
        kind = "gpu" if any("gpu" in d.lower() for d in devices) else "cpu"
        strategy = tf.distribute.MirroredStrategy(
            devices, cross_device_ops=_cross_device_ops(cfg.cross_device_ops, kind == "gpu"))
    elif name == "tpu":
        strategy, kind = _tpu(cfg.tpu), "tpu"
    policy = _mixed_precision(cfg.mixed_precision, kind)
    info = {"strategy": name, "class": type(strategy).__name__, "device_kind": kind,
            "replicas": strategy.num_replicas_in_sync, "mixed_precision": policy,
            "devices": _devices(strategy)}
    return strategy, info


def _devices(strategy):
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy has no device list: it uses what TF picks
        return [d.name for d in tf.config.list_logical_devices("CPU")][:1]


def is_chief(strategy):
    """True on the worker that writes checkpoints and artifacts (always, outside multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type in ("chief", None) or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def barrier(strategy):
    """Wait until every worker gets here (a tiny all-reduce); no-op outside multi-worker.

    Workers skip the chief's exports; without this they exit first and the chief's
    coordination service reports them as crashed."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        strategy.reduce(tf.distribute.ReduceOp.SUM,
                        strategy.run(lambda: tf.constant(1.0)), axis=None)
