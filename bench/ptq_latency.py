"""Post-training quantization targets (issue #18), measured side by side in one interleaved
run on the artifacts of the newest finished run of recipes/bert_ptq.yaml: TFLite fp32,
dynamic-range int8, the LiteRT Quantizer's int4 (after its accuracy search, if one ran),
ONNX Runtime fp32 and static int8. Prints the latency pairs and the size ratio the issue
speaks of: int4 / dynamic int8 latency (target <= 1), ORT static int8 / ORT fp32 latency
(<= 0.45), int4 / fp32 bytes (<= 0.16).

    python bench/ptq_latency.py [--runs_dir runs] [--batch_sizes 1,8] [--seq_length 128|dev]

``--seq_length dev`` measures each padded length SST-2 dev is run at (16/32/48/64 tokens)
and weights the medians by each length's share of the dev sentences.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from int8_latency import arguments, measure, newest_run  # noqa: E402

WANTED = ["tflite_fp32", "tflite_dynamic_int8", "tflite_int4", "onnx_fp32", "onnx_static_int8"]
PAIRS = [("tflite_int4", "tflite_dynamic_int8"), ("onnx_static_int8", "onnx_fp32"),
         ("tflite_int4", "tflite_fp32"), ("tflite_dynamic_int8", "tflite_fp32")]


def main():
    args = arguments(__doc__)

    import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
    from tfdeploy.export import Artifact

    run_dir, paths = newest_run(args.runs_dir, "bert_ptq", WANTED)
    artifacts = []
    for name, path in paths.items():
        print(f"{name:22s} {path}")
        artifacts.append(Artifact(name, path))
    sizes = {a.name: a.size() for a in artifacts}
    results, where = measure(artifacts, args, run_dir)
    for key in results[WANTED[0]]:
        print(f"\n{key.replace('_', ' ')}, {where}, 2 threads")
        for name, by_batch in results.items():
            st = by_batch[key]
            print(f"  {name:22s} median {st['median_ms']:7.2f} ms  p90 {st['p90_ms']:7.2f} ms")
        for a, b in PAIRS:
            print(f"  {a} / {b}: {results[a][key]['median_ms'] / results[b][key]['median_ms']:.2f}")
    print(f"\nbytes tflite_int4 / tflite_fp32: {sizes['tflite_int4'] / sizes['tflite_fp32']:.3f}")


if __name__ == "__main__":
    main()
