"""Parity of our tf_keras BERT with Hugging Face's PyTorch ``BertModel`` on the same ids.

The reference runs in its own temporary virtualenv (``torch==2.13.0`` + ``transformers``),
so torch never becomes a dependency of tfdeploy. Prints the max abs difference of the last
hidden state over real tokens (and over all positions) for sentences of different lengths,
padded in one batch. Exit status 1 if the difference exceeds 1e-4.

    python bench/bert_parity.py [--checkpoint minilm-l6] [--venv DIR]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np

import tfdeploy  # noqa: F401  (Keras 2 before TensorFlow)
from tfdeploy.models import checkpoints
from tfdeploy.models.bert import from_pretrained

SENTENCES = [
    "it's a charming and often affecting journey.",
    "unflinchingly bleak and desperate",
    "a gorgeous, witty, seductive movie.",
    "bad.",
    "the acting, costumes, music, cinematography and sound are all astounding given the "
    "production's austere locales.",
    "it's slow -- very, very slow.",
    "although laced with humor and a few fanciful touches, the film is a refreshingly "
    "serious look at young women.",
    "a sometimes tedious film.",
    "you don't have to know about music to appreciate the film's easygoing blend of comedy "
    "and romance.",
    "no",
]

REFERENCE = textwrap.dedent("""
    import sys, numpy as np, torch
    from transformers import BertModel
    model = BertModel.from_pretrained(sys.argv[1]).eval()
    data = np.load(sys.argv[2])
    with torch.no_grad():
        out = model(input_ids=torch.tensor(data["input_ids"], dtype=torch.long),
                    attention_mask=torch.tensor(data["attention_mask"], dtype=torch.long),
                    token_type_ids=torch.tensor(data["token_type_ids"], dtype=torch.long))
    np.save(sys.argv[3], out.last_hidden_state.numpy())
    print("torch", torch.__version__)
""")


def reference_venv(path):
    python = os.path.join(path, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "torch==2.13.0", "transformers"], check=True)
    return python


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="minilm-l6")
    parser.add_argument("--venv", help="reuse this virtualenv (created if missing) instead "
                                       "of a temporary one")
    args = parser.parse_args()
    directory = checkpoints.resolve(args.checkpoint)
    encoder, tokenizer = from_pretrained(directory)
    batch = tokenizer(SENTENCES)
    ours = encoder(batch, training=False).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        python = reference_venv(args.venv or os.path.join(tmp, "venv"))
        np.savez(os.path.join(tmp, "ids.npz"), **batch)
        script = os.path.join(tmp, "reference.py")
        with open(script, "w") as f:
            f.write(REFERENCE)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        subprocess.run([python, script, directory, os.path.join(tmp, "ids.npz"),
                        os.path.join(tmp, "ref.npy")], check=True, env=env)
        ref = np.load(os.path.join(tmp, "ref.npy"))
    real = batch["attention_mask"].astype(bool)
    lengths = real.sum(1)
    diff_real = float(np.max(np.abs(ours[real] - ref[real])))
    diff_all = float(np.max(np.abs(ours - ref)))
    print(f"checkpoint: {directory}")
    print(f"sentences: {len(SENTENCES)}, token lengths {sorted(lengths.tolist())}, padded to "
          f"{real.shape[1]}")
    for i, n in enumerate(lengths):
        print(f"  sentence {i}: {n:3d} tokens, max abs diff "
              f"{np.max(np.abs(ours[i, :n] - ref[i, :n])):.2e}")
    print(f"max abs diff, real tokens: {diff_real:.2e}")
    print(f"max abs diff, all positions (padding included): {diff_all:.2e}")
    print("PASS" if diff_real <= 1e-4 else "FAIL", "(limit 1e-4)")
    return 0 if diff_real <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
