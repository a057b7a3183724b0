"""The run's ledger in TensorBoard, beside the stages' training curves: one TensorBoard
run per stage/artifact with its numbers as scalars and its record as text, and the
recipe's hyper-parameters through the HParams plugin with the numbers as its metrics, so
``tensorboard --logdir runs/`` compares runs of a recipe side by side."""
import json
import os


def flat(tree, prefix=""):
    """Recipe fields as HParams values (numbers, text, bools); lists as text."""
    out = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, value in enumerate(tree):
            out.update(flat(value, f"{prefix}{i}."))
    elif isinstance(tree, (bool, int, float, str)):
        out[prefix[:-1]] = tree
    elif tree is not None:
        out[prefix[:-1]] = json.dumps(tree)
    return out


def numbers(rec):
    out = dict(rec["metrics"])
    for key in ("agreement", "size_bytes", "gzip_bytes", "weights_sparsity"):
        if rec.get(key) is not None:
            out[key] = rec[key]
    for batch, lat in (rec.get("latency") or {}).items():
        out[f"latency_{batch}_ms"] = lat["median_ms"]
    return out


def write(summary, recipe_tree, run_dir):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    root = os.path.join(run_dir, "tensorboard")
    metrics = {}
    for rec in summary["records"]:
        name = f"{rec['stage']}.{rec['artifact']}"
        writer = tf.summary.create_file_writer(os.path.join(root, "ledger", name))
        with writer.as_default():
            for key, value in numbers(rec).items():
                tf.summary.scalar(key, value, step=0)
                metrics[f"{name}.{key}"] = value
            tf.summary.text("record", json.dumps(rec, indent=1), step=0)
        writer.close()
    writer = tf.summary.create_file_writer(os.path.join(root, "hparams"))
    with writer.as_default():
        hp.hparams(flat(recipe_tree), trial_id=os.path.basename(run_dir))
        for key, value in metrics.items():
            tf.summary.scalar(key, value, step=0)
    writer.close()
