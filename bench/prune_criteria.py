"""Pruning criteria side by side: the same fine-tuned model, schedule, data and step budget
(recipes/bert_prune80_qat.yaml's prune stage, 80% sparsity), pruned by magnitude (TFMOT),
movement scores (`gradient`) and first-order Taylor scores (`taylor`), each layer to 80%,
and Taylor scores ranked across all layers (`taylor:global`, 80% overall); one table of
SST-2 dev accuracy (Keras, after stripping) and measured sparsity.

Each row is its own recipe run (name bert_prune80_<criterion>[_global]); finished stages
are reused from the stage cache, so a row already measured is read, not rerun.

    python bench/prune_criteria.py [--criteria magnitude,gradient,taylor,taylor:global]
"""
import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(recipe, row, output_dir):
    criterion, _, scope = row.partition(":")
    scope = scope or "layer"
    name = f"bert_prune80_{criterion}" + ("_global" if scope == "global" else "")
    cmd = [sys.executable, "-m", "tfdeploy.run", recipe, "--resume",
           "--stages=finetune,prune", f"--set=name={name}", "--set=export.formats=[]",
           "--set=benchmark.enabled=false", f"--set=stages.1.criterion={criterion}",
           f"--set=stages.1.scope={scope}"]
    if output_dir:
        cmd.append(f"--output_dir={output_dir}")
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    runs = sorted(glob.glob(os.path.join(output_dir or os.path.join(ROOT, "runs"), name, "*",
                                         "metrics.json")))
    with open(runs[-1]) as f:
        metrics = json.load(f)
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=os.path.join(ROOT, "recipes",
                                                         "bert_prune80_qat.yaml"))
    parser.add_argument("--criteria", default="magnitude,gradient,taylor,taylor:global",
                        help="criterion[:scope], comma-separated")
    parser.add_argument("--output_dir", default="")
    args = parser.parse_args()
    rows = []
    for criterion in args.criteria.split(","):
        metrics = run(args.recipe, criterion, args.output_dir)
        base, pruned = metrics["records"][0], metrics["records"][1]
        report = pruned.get("stage_report") or {}  # kept in eval.json, cached or not
        layers = list((report.get("layers") or {}).values()) or [float("nan")]
        rows.append((criterion, base["metrics"]["accuracy"], pruned["metrics"]["accuracy"],
                     report.get("sparsity"), min(layers), max(layers), report.get("schedule")))
    print("\n| criterion | fine-tuned | pruned (Keras) | drop (points) | sparsity | "
          "per-layer min / max | schedule |")
    print("|---|---|---|---|---|---|---|")
    for criterion, base, acc, sparsity, low, high, schedule in rows:
        sp = f"{sparsity:.4f}" if sparsity is not None else "?"
        print(f"| {criterion} | {base:.4f} | {acc:.4f} | {100 * (base - acc):.2f} | {sp} | "
              f"{low:.3f} / {high:.3f} | {schedule} |")


if __name__ == "__main__":
    main()
