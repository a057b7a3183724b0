"""The int8 artifacts against each other, measured side by side in one interleaved run:
TF SavedModel (reference), TFLite dynamic-range int8, full int8 (PTQ) and the QAT int8
model, ONNX Runtime fp32 and int8. Prints each latency ratio to the SavedModel and the
pairs the export targets speak of: full / dynamic, QAT / dynamic, ORT int8 / ORT fp32.

Artifacts come from the newest finished runs of recipes/bert.yaml and recipes/bert_qat.yaml
(run them first):

    python bench/int8_latency.py [--runs_dir runs] [--batch_sizes 1,8]
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WANTED = {"bert": ["savedmodel", "tflite_dynamic_int8", "tflite_int8", "onnx_fp32", "onnx_int8"],
          "bert_qat": ["tflite_int8"]}


def newest_paths(runs_dir, recipe, artifacts):
    """{artifact: path} from the newest run of ``recipe`` whose metrics list them all."""
    for metrics in sorted(glob.glob(os.path.join(runs_dir, recipe, "*", "metrics.json")),
                          reverse=True):
        with open(metrics) as f:
            records = json.load(f)["records"]
        run_dir = os.path.dirname(metrics)  # paths in metrics.json are relative to it
        paths = {r["artifact"]: os.path.join(run_dir, r["path"]) for r in records
                 if r.get("path")}
        if all(a in paths for a in artifacts):
            return {a: paths[a] for a in artifacts}
    sys.exit(f"error: no finished run of recipes/{recipe}.yaml under {runs_dir} exported "
             f"{', '.join(artifacts)}; run `python -m tfdeploy.run recipes/{recipe}.yaml` first")


def arguments(doc):
    """--runs_dir, --batch_sizes, --seq_length and --seconds, shared by the scripts reading
    recipe runs."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--seq_length", type=int, default=128,
                        help="tokens per row (SST-2 dev: median 25 with [CLS] and [SEP], 76%% within 32)")
    parser.add_argument("--seconds", type=float, default=10.0)
    return parser.parse_args()


def main():
    args = arguments(__doc__)

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
    import tensorflow as tf

    from tfdeploy import bench
    from tfdeploy.export import Artifact

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    artifacts = []
    for recipe, wanted in WANTED.items():
        for name, path in newest_paths(args.runs_dir, recipe, wanted).items():
            label = "qat_int8" if recipe == "bert_qat" else name
            print(f"{label:22s} {path}")
            artifacts.append(Artifact(label, path))
    settings = bench.Settings(batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                              seq_length=args.seq_length, seconds=args.seconds)
    from tfdeploy.models.bert import token_inputs

    results = bench.benchmark(artifacts, settings, make_inputs=token_inputs)
    pairs = [("tflite_int8", "tflite_dynamic_int8"), ("qat_int8", "tflite_dynamic_int8"),
             ("onnx_int8", "onnx_fp32"), ("onnx_fp32", "savedmodel"),
             ("tflite_dynamic_int8", "savedmodel")]
    for key in results["savedmodel"]:
        print(f"\n{key.replace('_', ' ')}, seq {settings.seq_length}, 2 threads")
        for name, by_batch in results.items():
            st = by_batch[key]
            print(f"  {name:22s} median {st['median_ms']:7.2f} ms  p90 {st['p90_ms']:7.2f} ms"
                  f"  ratio to savedmodel {st['ratio']:.2f}")
        for a, b in pairs:
            print(f"  {a} / {b}: {results[a][key]['median_ms'] / results[b][key]['median_ms']:.2f}")


if __name__ == "__main__":
    main()
