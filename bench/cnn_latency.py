"""The Fashion-MNIST CNN's artifacts against each other, in one interleaved run (2 threads):
dense fp32 TFLite, the pruned model stored dense and stored sparse (XNNPACK sparse
inference), post-training and QAT int8 TFLite, ONNX Runtime fp32 and static int8. Prints
latency ratios at each batch size, size ratios, and whether XNNPACK's sparse kernels ran.

"Did the sparse kernels run" is measured, not assumed: the pruned weights stored dense and
stored sparse give bit-identical logits only when XNNPACK runs the same dense NHWC kernels
for both (its sparse NCHW path sums in another order), and the sparse file is then no
faster. Artifacts come from the newest finished runs of recipes/fashion_mnist.yaml (and
fashion_mnist_cqat.yaml, when there is one). ``--run_name`` reads another run name's
pruned and QAT artifacts instead (e.g. a run made with ``--set name=fashion_mnist_p75``):

    python bench/cnn_latency.py [--runs_dir runs] [--run_name fashion_mnist]
        [--batch_sizes 1,32] [--seconds 5]
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# label: (recipe, stage, artifact)
WANTED = {"dense_fp32": ("fashion_mnist", "train", "tflite_fp32"),
          "pruned_fp32_dense": ("fashion_mnist", "prune", "tflite_fp32"),
          "pruned_fp32_sparse": ("fashion_mnist", "prune", "tflite_fp32_sparse"),
          "ptq_int8": ("fashion_mnist", "train", "tflite_int8"),
          "qat_int8": ("fashion_mnist", "qat", "tflite_int8"),
          "ort_fp32": ("fashion_mnist", "train", "onnx_fp32"),
          "ort_static_int8": ("fashion_mnist", "train", "onnx_static_int8"),
          "ort_qat_int8": ("fashion_mnist", "qat", "onnx_static_int8")}
OPTIONAL = {"cqat_int8": ("fashion_mnist_cqat", "qat", "tflite_int8")}
RATIOS = [("pruned_fp32_sparse", "dense_fp32", "<= 0.6"),
          ("pruned_fp32_sparse", "pruned_fp32_dense", "same weights"),
          ("ptq_int8", "dense_fp32", "<= 0.5"), ("qat_int8", "dense_fp32", "<= 0.5"),
          ("cqat_int8", "dense_fp32", ""),
          ("ort_static_int8", "ort_fp32", "<= 0.6"), ("ort_qat_int8", "ort_fp32", "")]


def newest_records(runs_dir, recipe):
    """{(stage, artifact): record with an absolute path} of the newest finished run."""
    for metrics in sorted(glob.glob(os.path.join(runs_dir, recipe, "*", "metrics.json")),
                          reverse=True):
        with open(metrics) as f:
            records = json.load(f)["records"]
        run_dir = os.path.dirname(metrics)
        out = {}
        for r in records:
            if r.get("path"):
                out[(r["stage"], r["artifact"])] = dict(r, path=os.path.join(run_dir, r["path"]))
        return out
    return None


def pick(runs_dir, run_name="fashion_mnist"):
    """Records by label; the pruned and QAT ones from ``run_name``'s newest run."""
    found, records = {}, {}
    for label, (recipe, stage, artifact) in {**WANTED, **OPTIONAL}.items():
        if recipe == "fashion_mnist" and stage != "train":
            recipe = run_name
        if recipe not in records:
            records[recipe] = newest_records(runs_dir, recipe) or {}
        rec = records[recipe].get((stage, artifact))
        if rec is None and label in WANTED:
            sys.exit(f"error: no finished run named {recipe} under {runs_dir} with "
                     f"{artifact} of stage {stage}; run `python -m tfdeploy.run "
                     f"recipes/fashion_mnist.yaml` first")
        if rec is not None:
            found[label] = rec
    return found


def same_arithmetic(dense_path, sparse_path, rows=256):
    """Max |logit difference| between two TFLite files on real test images."""
    import numpy as np

    from tfdeploy.data.fashion_mnist import FashionMNIST
    from tfdeploy.export import runner_for

    images = FashionMNIST(FashionMNIST.Config(type="fashion_mnist", channels=3)).load()
    batch = np.asarray(images.validation.examples[:rows], np.float32) / 255.0
    a = runner_for(dense_path)({"image": batch})
    b = runner_for(sparse_path)({"image": batch})
    return float(np.abs(a - b).max())


def byte_parts(path):
    """(tensor data, quantization parameters, the rest) in bytes of a TFLite file. Per
    channel, an int8 file stores a float32 scale and an int64 zero point for the kernel
    and the same again for its int32 bias: on a narrow CNN that is a real share. The export
    stores each distinct zero-point vector once, so each is counted once."""
    from tensorflow.lite.python import schema_py_generated as schema

    with open(path, "rb") as f:
        buf = f.read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    data = sum(len(b.data) for b in model.buffers if b.data is not None)
    scales, zero_points = 0, set()
    for t in model.subgraphs[0].tensors:
        q = t.quantization
        if q is not None and q.scale is not None:
            scales += 4 * len(q.scale)
            zero_points.add(tuple(q.zeroPoint if q.zeroPoint is not None else ()))
    quant = scales + sum(8 * len(z) for z in zero_points)
    return data, quant, len(buf) - data - quant


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs"))
    parser.add_argument("--run_name", default="fashion_mnist",
                        help="run name whose prune and qat stages are measured")
    parser.add_argument("--batch_sizes", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
    from tfdeploy import bench
    from tfdeploy.export import Artifact

    found = pick(args.runs_dir, args.run_name)
    for label, rec in found.items():
        print(f"{label:20s} acc {rec['metrics']['accuracy']:.4f}  {rec['size_bytes']:>9,d} B "
              f"(gzip {rec['gzip_bytes']:>9,d})  {rec['path']}")
    artifacts = [Artifact(label, rec["path"]) for label, rec in found.items()]
    settings = bench.Settings(batch_sizes=[int(b) for b in args.batch_sizes.split(",")],
                              seconds=args.seconds, threads=2)
    results = bench.benchmark(artifacts, settings, reference="dense_fp32")
    for key in results["dense_fp32"]:
        print(f"\n{key.replace('_', ' ')}, 2 threads, one interleaved run")
        for label, by_batch in results.items():
            st = by_batch[key]
            print(f"  {label:20s} median {st['median_ms']:8.3f} ms  p90 {st['p90_ms']:8.3f} ms")
        for a, b, goal in RATIOS:
            if a in results and b in results:
                ratio = results[a][key]["median_ms"] / results[b][key]["median_ms"]
                print(f"  {a} / {b}: {ratio:.3f}  {goal}")
    print("\nsizes")
    for a, b, what, goal in [("ptq_int8", "dense_fp32", "size_bytes", "<= 0.27"),
                             ("qat_int8", "dense_fp32", "size_bytes", "<= 0.27"),
                             ("pruned_fp32_dense", "dense_fp32", "gzip_bytes", "<= 0.45"),
                             ("pruned_fp32_sparse", "dense_fp32", "size_bytes", "")]:
        print(f"  {what} {a} / {b}: {found[a][what] / found[b][what]:.3f}  {goal}")
    dense = found["dense_fp32"]["size_bytes"]
    for label in ("ptq_int8", "qat_int8"):
        data, quant, rest = byte_parts(found[label]["path"])
        print(f"  {label} / dense_fp32 in parts: tensor data {data / dense:.3f}, scales and "
              f"zero points {quant / dense:.3f}, the rest {rest / dense:.3f}")
    diff = same_arithmetic(found["pruned_fp32_dense"]["path"],
                           found["pruned_fp32_sparse"]["path"])
    ran = "no: bit-identical to the dense file, same kernels" if diff == 0 else \
        f"the arithmetic differs (max |diff| {diff:.2e}): another kernel path ran"
    print(f"\nXNNPACK sparse kernels ran on the sparse file? {ran}")


if __name__ == "__main__":
    main()
