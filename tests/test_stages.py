"""cluster and distill, and stage chains on a CNN (Fashion-MNIST) and a small BERT."""
import os

import numpy as np
import pytest

from tfdeploy import pipeline
from tfdeploy.errors import RecipeError, StageError
from tfdeploy.export import savedmodel, tflite
from tfdeploy.recipe import load_recipe

from conftest import ROOT, stage_context, run_stages

def cnn_chain(tmp_path, stages):
    recipe_path = tmp_path / "cnn.yaml"
    recipe_path.write_text(f"""name: cnn
model: {{type: cnn, filters: [8, 16], dense: 64}}
data: {{type: fashion_mnist, max_train_examples: 1024, max_validation_examples: 256}}
output: {{tensorboard: false}}
stages: {stages}
""")
    recipe = load_recipe(str(recipe_path))
    context, chain = pipeline.prepare(recipe, pipeline.Options())
    context.run_dir = context.stage_dir = str(tmp_path)
    with context.strategy.scope():
        model = context.plugin.build()
    model, reports = run_stages(context, chain, model)
    return context, [(cfg, reports[cfg.name]) for cfg, _ in chain], model


def to_tflite(model, context, tmp_path):
    path = savedmodel.export(model, context.plugin.input_specs(), ["x"], str(tmp_path / "sm"),
                             "m")
    out = str(tmp_path / "m.tflite")
    tflite.export(path, "tflite_int8", out)
    return out


def test_cnn_cluster_then_cqat_keeps_cluster_count_in_tflite(tmp_path):
    context, chain, model = cnn_chain(tmp_path, """
  - {type: train, steps: 16, batch_size: 64, learning_rate: 2.0e-3}
  - {type: cluster, number_of_clusters: 16, steps: 8, batch_size: 64, min_weights: 1000}
  - {type: qat, steps: 8, batch_size: 64}""")
    cluster_report, qat_report = chain[1][1], chain[2][1]
    assert set(cluster_report["unique_weights"]) == {"conv_1", "hidden"}
    assert all(u <= 16 for u in cluster_report["unique_weights"].values())
    assert qat_report["scheme"] == "cluster_preserve"
    # In the int8 TFLite weights each output channel of a clustered layer has <= 16 values.
    out = to_tflite(model, context, tmp_path)
    shapes = {(16, 3, 3, 8): "conv_1", (64, 784): "hidden"}
    for shape, value in tflite.weight_tensors(out):
        if shape in shapes:
            per_channel = value.reshape(shape[0], -1)
            assert max(np.unique(r).size for r in per_channel) <= 16, shapes[shape]


def test_cnn_prune_then_pqat_keeps_zeros_in_tflite(tmp_path):
    context, chain, model = cnn_chain(tmp_path, """
  - {type: train, steps: 16, batch_size: 64, learning_rate: 2.0e-3}
  - {type: prune, steps: 12, frequency: 4, final_sparsity: 0.5, batch_size: 64,
     policy: none, min_weights: 1000}
  - {type: qat, steps: 8, batch_size: 64}""")
    assert chain[2][1]["scheme"] == "prune_preserve"
    zeros = chain[2][1]["int8_zeros"]
    assert zeros["after"] >= 0.99 * zeros["before"] > 0
    weights = dict(tflite.weight_tensors(to_tflite(model, context, tmp_path)))
    assert np.mean(weights[(64, 784)] == 0) >= 0.495


def test_distillation_reduces_kl_and_keeps_teacher_frozen(tmp_path, small_bert_dir):
    recipe, context, chain, model = stage_context(
        tmp_path, small_bert_dir,
        "stages=[{type: train, steps: 12, learning_rate: 1.0e-3, batch_size: 16}, "
        "{type: distill, student_layers: [1], alpha: 0.0, steps: 24, evals: 3, "
        "learning_rate: 1.0e-3, batch_size: 16}]")
    for index, (cfg, stage) in enumerate(chain):
        teacher_before = [w.copy() for w in model.get_weights()] if index == 1 else None
        result = stage.run(model, context)
        context.traits = result.traits
        if index == 1:
            assert all(np.array_equal(a, b) for a, b in zip(teacher_before, model.get_weights()))
            student = result.model
        model = result.model
    report = result.report
    assert report["kl_last"] < report["kl_first"]
    assert report["student_params"] < report["teacher_params"]
    assert len([l for l in student.layers if l.name.endswith("_intermediate")]) == 1


def test_hidden_state_distillation(tmp_path, small_bert_dir):
    """Uniform layer mapping (2-layer teacher -> 1 layer: student 1 learns teacher 2) and
    the hidden-state MSE falls; a fresh student works too."""
    recipe, context, chain, model = stage_context(
        tmp_path, small_bert_dir,
        "stages=[{type: train, steps: 1}, "  # a teacher 'previous' needs a stage before
        "{type: distill, student_layers: [0], alpha: 0.0, hidden_weight: 1.0, "
        "steps: 24, evals: 3, learning_rate: 1.0e-3, batch_size: 16}]")
    stage = chain[1][1]
    report = stage.run(model, context).report
    assert [list(p) for p in report["hidden_pairs"]] == [[0, 0], [1, 2]]
    first, last = report["hidden_mse"]
    assert last < first
    recipe, context, chain, model = stage_context(
        tmp_path / "fresh", small_bert_dir,
        "stages=[{type: train, steps: 1}, "
        "{type: distill, student: {layers: [0]}, hidden_weight: 1.0, steps: 4, "
        "batch_size: 8}]")
    report = chain[1][1].run(model, context).report
    assert np.isfinite(report["hidden_mse"][-1])


def test_distillation_on_masked_copies(tmp_path, small_bert_dir):
    """augment: the copy masks only real word pieces; training on batch + copy lowers the
    KL (the history's KL covers both halves) and counts accuracy on the labelled half."""
    import tensorflow as tf

    recipe, context, chain, model = stage_context(
        tmp_path, small_bert_dir,
        "stages=[{type: train, steps: 1}, "
        "{type: distill, student_layers: [1], alpha: 0.0, augment: 0.5, steps: 24, "
        "evals: 3, learning_rate: 1.0e-3, batch_size: 16}]")
    plugin = context.plugin
    tok = plugin.tokenizer
    batch = {k: tf.constant(v) for k, v in tok(["a fine film", "dull , dull , dull"],
                                                pad_to=12).items()}
    copy = plugin.augment(batch, rate=0.99)
    ids, new = batch["input_ids"].numpy(), copy["input_ids"].numpy()
    special = (ids == tok.cls_id) | (ids == tok.sep_id) | (batch["attention_mask"].numpy() == 0)
    assert np.array_equal(new[special], ids[special])
    assert (new[~special] == tok.mask_id).mean() > 0.8
    stage = chain[1][1]
    report = stage.run(model, context).report
    assert report["kl_last"] < report["kl_first"]


def test_distill_errors(tmp_path, small_bert_dir):
    with pytest.raises(StageError, match="needs an earlier stage"):  # before any work
        stage_context(tmp_path, small_bert_dir, "stages=[{type: distill, student_layers: [0]}]")
    tiny = os.path.join(ROOT, "recipes", "tiny.yaml")
    with pytest.raises(RecipeError, match="either student_layers or student"):
        load_recipe(tiny, ["stages=[{type: distill, student_layers: [0], "
                           "student: {dropout: 0.2}}]"])
    with pytest.raises(RecipeError, match="give student_layers"):
        load_recipe(tiny, ["stages=[{type: distill}]"])
    with pytest.raises(RecipeError, match="alpha: 1 switches off"):
        load_recipe(tiny, ["stages=[{type: distill, student_layers: [0], alpha: 1.0, "
                           "augment: 0.2}]"])


def test_refit_trains_again_on_all_rows_for_the_chosen_steps(tmp_path):
    """refit: the selection split chooses the evaluation, then the stage trains again from
    its starting weights on training + selection rows for that evaluation's steps."""
    import json

    context, chain, model = cnn_chain(tmp_path, """
  - {type: train, epochs: 2, evals: 2, batch_size: 64, learning_rate: 1.0e-3, refit: true}
""")
    with open(tmp_path / "history.json") as f:
        history = json.load(f)
    held = len(context.selection)
    assert held > 0 and history["refit"]["rows"] == len(context.train) + held == 1024
    per_period = -(-history["refit"]["of_steps"] // 2)  # 2 evaluations over all the rows
    assert history["refit"]["of_steps"] == 32  # 2 epochs of 1024 rows at batch 64
    assert history["refit"]["steps"] == (history["best_epoch"] + 1) * per_period
    # the refit's optimizer is a fresh one that ran exactly the refit's steps
    assert int(model.optimizer.iterations.numpy()) == history["refit"]["steps"]
    assert context.traits.selection_seen
    assert len(history["val_accuracy"]) == 2  # the selection fit's periods are kept


def test_refit_needs_a_selection_split(tmp_path):
    with pytest.raises(StageError, match="refit needs a selection split"):
        cnn_chain(tmp_path, """
  - {type: train, steps: 2, refit: true, keep_best: false}
""")
