"""The distribution-strategy layer: one recipe field decides where tuning and inference run.

Everything that creates variables (model build, compile, optimizer) happens inside
``strategy.scope()``; datasets are batched with the *global* batch size
(per-replica batch x replicas) and Keras distributes them.
"""
import json
import os

import numpy as np
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


def parse_tf_config(text=None, strategy="multi_worker"):
    """Validate TF_CONFIG for a cluster strategy; return the parsed dict."""
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise TfdeployError(f"{strategy} needs TF_CONFIG (cluster spec and this task) in "
                            f"the environment")
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


PS_ROLES = ("worker", "ps")


def _ps_cluster():
    """TF_CONFIG for parameter_server: a chief, at least one worker and one ps."""
    config = parse_tf_config(strategy="parameter_server")
    cluster = config["cluster"]
    missing = [job for job in ("chief", "worker", "ps") if not cluster.get(job)]
    if missing:
        raise TfdeployError(f"TF_CONFIG: parameter_server needs a chief, workers and ps "
                            f"tasks; the cluster has no {', '.join(missing)}")
    return config


def _parameter_server(cfg):
    """ParameterServerStrategy on this chief; variables over ``min_shard_bytes`` are split
    across the ps tasks (up to one shard per ps), so a big embedding table never has to
    fit on one machine. Workers pull batches through a ClusterCoordinator (Keras' fit)."""
    cluster = _ps_cluster()["cluster"]
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=cfg.min_shard_bytes, max_shards=len(cluster["ps"]))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def serve_cluster_task(cfg, override=None):
    """For parameter_server, a worker or ps task is a TF server that the chief drives: start
    it and serve until the process is stopped (True); anything else returns False."""
    if (override or cfg.strategy) != "parameter_server":
        return False
    task = _ps_cluster()["task"]
    if task["type"] not in PS_ROLES:
        return False
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=task["type"],
                                  task_index=task["index"], protocol="grpc", start=True)
    print(f"parameter_server: {task['type']} {task['index']} serving at "
          f"{resolver.cluster_spec().task_address(task['type'], task['index'])}", flush=True)
    server.join()
    return True


def is_parameter_server(strategy):
    return isinstance(strategy, tf.distribute.ParameterServerStrategy)


def placement(model):
    """{variable: [ps device per shard]} for variables split across ps tasks (empty when
    none is): what the report shows of a parameter_server run."""
    shards = {}
    for v in model.weights:
        name = v.name.split(":")[0]
        base, _, part = name.rpartition("/part_")
        if base and part.isdigit():
            shards.setdefault(base, []).append((int(part), v.device, list(v.shape)))
    return {base: [{"device": d, "shape": s} for _, d, s in sorted(parts)]
            for base, parts in shards.items()}


def for_loading(strategy):
    """The strategy a saved stage model loads under: parameter_server stages save gathered,
    plain models (whole variables), so those load on this process."""
    return tf.distribute.get_strategy() if is_parameter_server(strategy) else strategy


def gathered(model, plugin):
    """A plain copy of ``model`` on this process, shards joined: what is saved, evaluated
    and exported after a parameter_server stage (the converters and H5 want whole
    variables)."""
    local = plugin.build()
    for layer in model.layers:
        pieces, order = {}, []
        for v in layer.weights:  # a sharded variable lists its parts in order
            base = v.name.split(":")[0].rpartition("/part_")[0] or v.name.split(":")[0]
            if base not in pieces:
                order.append(base)
                pieces[base] = []
            pieces[base].append(v.numpy())
        if order:
            local.get_layer(layer.name).set_weights(
                [np.concatenate(pieces[b]) if len(pieces[b]) > 1 else pieces[b][0]
                 for b in order])
    return local


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
    if name == "parameter_server":
        strategy = _parameter_server(cfg)
        cluster = _ps_cluster()["cluster"]
        return strategy, {"strategy": name, "class": type(strategy).__name__,
                          "device_kind": "cpu", "replicas": strategy.num_replicas_in_sync,
                          "mixed_precision": "none", "workers": len(cluster["worker"]),
                          "ps": len(cluster["ps"]), "devices": []}
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
