"""Shared test set-up. SST-2 is found through TFDEPLOY_DATA_DIR (default: ../shared/data
beside the repository, as in CI); tests that need it fail, never skip, when it is missing."""
import os
import subprocess
import sys

import tfdeploy  # noqa: F401  (pins Keras 2 before any test imports TensorFlow)
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TFDEPLOY_DATA_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data"))


@pytest.fixture(scope="session")
def sst2_dir():
    path = os.path.join(os.environ["TFDEPLOY_DATA_DIR"], "sst2")
    assert os.path.exists(os.path.join(path, "dev.tsv")), (
        f"SST-2 not found in {path}; set TFDEPLOY_DATA_DIR to the folder holding sst2/")
    return path


def fashion_arrays(prefix, count):
    """The first ``count`` real Fashion-MNIST rows of ``prefix`` (train or t10k) as a user
    keeps them: images [N, 28, 28, 1] in [0, 1] and int64 labels."""
    import numpy as np

    from tfdeploy.data.fashion_mnist import FashionMNIST, read_idx

    folder = FashionMNIST(FashionMNIST.Config(type="fashion_mnist")).find()
    x = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"))[:count]
    y = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"))[:count]
    return (x[..., None] / 255.0).astype(np.float32), y.astype(np.int64)


def run_cli(*args, cwd=ROOT, timeout=600, env=None):
    """Run `python -m tfdeploy.run ...`; return the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "tfdeploy.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


SMALL_BERT = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, hidden_act="gelu", max_position_embeddings=64,
                  type_vocab_size=2, layer_norm_eps=1e-12)


@pytest.fixture(scope="session")
def small_bert_dir(tmp_path_factory):
    """A 2-layer, hidden-32 BERT checkpoint (random weights) with the real MiniLM vocab."""
    import shutil

    from tfdeploy.models import checkpoints
    from test_bert import make_checkpoint

    directory = tmp_path_factory.mktemp("small_bert")
    make_checkpoint(str(directory), cfg=SMALL_BERT)
    shutil.copy(os.path.join(checkpoints.resolve("minilm-l6"), "vocab.txt"),
                directory / "vocab.txt")
    return directory


def run_stages(context, chain, model):
    """Run each stage in turn as the pipeline does (traits handed on); the last model and
    {stage name: report}."""
    reports = {}
    for cfg, stage in chain:
        result = stage.run(model, context)
        model, context.traits = result.model, result.traits
        reports[cfg.name] = result.report
    return model, reports


def stage_context(tmp_path, checkpoint, *overrides):
    """(recipe, context, model) for running stages in-process on SST-2 rows."""
    from tfdeploy import pipeline
    from tfdeploy.recipe import load_recipe

    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny.yaml"), [
        f"model.checkpoint={checkpoint}", "model.layers=null", "data.max_train_examples=256",
        "evaluate.max_examples=128", "output.tensorboard=false", *overrides])
    context, stages = pipeline.prepare(recipe, pipeline.Options())
    context.run_dir = str(tmp_path)
    context.stage_dir = str(tmp_path / "stage")
    os.makedirs(context.stage_dir, exist_ok=True)
    with context.strategy.scope():
        model = context.plugin.build()
    return recipe, context, stages, model
