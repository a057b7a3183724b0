"""The int8 artifacts against each other, measured side by side in one interleaved run:
TF SavedModel (reference), TFLite dynamic-range int8, full int8 (PTQ) and the QAT int8
model, ONNX Runtime fp32 and int8. Prints each latency ratio to the SavedModel and the
pairs the export targets speak of: full / dynamic, QAT / dynamic, ORT int8 / ORT fp32.

Artifacts come from the newest finished runs of recipes/bert.yaml and recipes/bert_qat.yaml
(run them first):

    python bench/int8_latency.py [--runs_dir runs] [--batch_sizes 1,8] [--seq_length 128|dev]
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WANTED = {"bert": ["savedmodel", "tflite_dynamic_int8", "tflite_int8", "onnx_fp32", "onnx_int8"],
          "bert_qat": ["tflite_int8"]}


def newest_run(runs_dir, recipe, artifacts):
    """(run dir, {artifact: path}) of the newest run of ``recipe`` whose metrics list
    ``artifacts``."""
    for metrics in sorted(glob.glob(os.path.join(runs_dir, recipe, "*", "metrics.json")),
                          reverse=True):
        with open(metrics) as f:
            records = json.load(f)["records"]
        run_dir = os.path.dirname(metrics)  # paths in metrics.json are relative to it
        paths = {r["artifact"]: os.path.join(run_dir, r["path"]) for r in records
                 if r.get("path")}
        if all(a in paths for a in artifacts):
            return run_dir, {a: paths[a] for a in artifacts}
    sys.exit(f"error: no finished run of recipes/{recipe}.yaml under {runs_dir} exported "
             f"{', '.join(artifacts)}; run `python -m tfdeploy.run recipes/{recipe}.yaml` first")


def seq_length(text):
    if text == "dev":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number of tokens, or dev")
    return value


def arguments(doc, batch_sizes="1,8", tokens=128, artifacts=None, more=()):
    """--runs_dir, --batch_sizes, --seq_length and --seconds, shared by the scripts reading
    recipe runs; --artifacts where the script lets the user pick them; ``more``: (flag,
    type, default) of a script's own flags."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--batch_sizes", default=batch_sizes)
    if artifacts is not None:
        parser.add_argument("--artifacts", default=artifacts,
                            help="comma-separated artifact names of the run")
    parser.add_argument("--seq_length", type=seq_length, default=tokens,
                        help="tokens per row, or dev: each padded length the run's validation "
                             "split (SST-2 dev) is run at, weighted by its share of the rows "
                             "(SST-2 dev: median 25 tokens with [CLS] and [SEP], 76%% within 32)")
    parser.add_argument("--seconds", type=float, default=10.0)
    for flag, kind, default in more:
        parser.add_argument(flag, type=kind, default=default)
    return parser.parse_args()


def length_shares(args, run_dir):
    """{padded length: share}: ``--seq_length`` alone, or the run's validation split by
    bucket (read with the run's own recipe, data source and tokenizer)."""
    if args.seq_length != "dev":
        return {args.seq_length: 1.0}
    from tfdeploy import data, models
    from tfdeploy.data.pipeline import encode_split
    from tfdeploy.recipe import load_recipe

    recipe = load_recipe(os.path.join(run_dir, "recipe.yaml"))
    task = data.create(recipe.data, recipe.seed).load()
    plugin = models.create(recipe.model, task.num_labels)
    split = task.validation.take(recipe.evaluate.max_examples)
    shares = encode_split(plugin, split, recipe.data).length_shares()
    print(f"{len(split)} validation rows by padded length: "
          + ", ".join(f"{n}: {share:.1%}" for n, share in shares.items()))
    return shares


def measure(artifacts, args, run_dir):
    """Interleaved latency of ``artifacts`` at the lengths ``--seq_length`` asks for:
    ({artifact: {batch key: {"median_ms": ...}}}, words for what it was measured at)."""
    from tfdeploy import bench
    from tfdeploy.models.bert import token_inputs

    shares = length_shares(args, run_dir)
    settings = bench.Settings(batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                              seconds=args.seconds)
    by_length, mix = bench.over_lengths(artifacts, settings, shares,
                                        reference=artifacts[0].name, make_inputs=token_inputs)
    if len(by_length) == 1:
        return by_length[min(shares)], f"seq {min(shares)}"
    for length, results in by_length.items():
        print(f"\nseq {length} ({shares[length]:.1%} of the rows)")
        for key in results[artifacts[0].name]:
            for name, by_batch in results.items():
                print(f"  {key.replace('_', ' ')}  {name:22s} median "
                      f"{by_batch[key]['median_ms']:7.2f} ms")
    return mix, "the validation split's lengths, weighted"


def main():
    args = arguments(__doc__)

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from tfdeploy.export import Artifact

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    artifacts, run_dir = [], None
    for recipe, wanted in WANTED.items():
        found, paths = newest_run(args.runs_dir, recipe, wanted)
        run_dir = run_dir or found  # bert.yaml's run: its data and tokenizer
        for name, path in paths.items():
            label = "qat_int8" if recipe == "bert_qat" else name
            print(f"{label:22s} {path}")
            artifacts.append(Artifact(label, path))
    results, where = measure(artifacts, args, run_dir)
    pairs = [("tflite_int8", "tflite_dynamic_int8"), ("qat_int8", "tflite_dynamic_int8"),
             ("onnx_int8", "onnx_fp32"), ("onnx_fp32", "savedmodel"),
             ("tflite_dynamic_int8", "savedmodel")]
    for key in results["savedmodel"]:
        print(f"\n{key.replace('_', ' ')}, {where}, 2 threads")
        for name, by_batch in results.items():
            st = by_batch[key]
            ratio = st["median_ms"] / results["savedmodel"][key]["median_ms"]
            print(f"  {name:22s} median {st['median_ms']:7.2f} ms  p90 {st['p90_ms']:7.2f} ms"
                  f"  ratio to savedmodel {ratio:.2f}")
        for a, b in pairs:
            print(f"  {a} / {b}: {results[a][key]['median_ms'] / results[b][key]['median_ms']:.2f}")


if __name__ == "__main__":
    main()
