"""prune: targets reached exactly for awkward step counts, selection, structured options,
clear errors for impossible configs."""
import numpy as np
import pytest

from tfdeploy.errors import RecipeError, StageError
from tfdeploy.selection import main_weight

from conftest import stage_context


def run_stage(tmp_path, ckpt, *overrides):
    recipe, context, stages, model = stage_context(tmp_path, ckpt, *overrides)
    cfg, stage = stages[-1]
    result = stage.run(model, context)
    return result.report, result.model, context


@pytest.mark.parametrize("steps,frequency,schedule,criterion", [
    (37, 10, "polynomial", "magnitude"), (13, 5, "constant", "magnitude"),
    (9, 100, "polynomial", "magnitude"), (37, 10, "polynomial", "gradient"),
    (13, 5, "constant", "taylor"), (13, 5, "polynomial", "magnitude, alpha: 0.5"),
    (13, 5, "polynomial", "taylor, alpha: 0.5")])
def test_sparsity_reaches_target_for_awkward_steps(tmp_path, small_bert_dir, steps, frequency,
                                                   schedule, criterion):
    report, model, _ = run_stage(tmp_path, small_bert_dir,
                                 f"stages=[{{type: prune, steps: {steps}, frequency: {frequency}, "
                                f"schedule: {schedule}, final_sparsity: 0.6, min_weights: 0, "
                                f"exclude: [classifier], batch_size: 8, criterion: {criterion}}}]")
    begin, end, freq = (report["schedule"][k] for k in ("begin", "end", "frequency"))
    assert (end - begin) % freq == 0 and end <= steps - 1
    assert set(report["layers"]) == {f"layer_{i}_{n}" for i in range(2) for n in
                                     ("attention_query", "attention_key", "attention_value",
                                      "attention_output", "intermediate", "output")}
    for name, value in report["layers"].items():  # measured from the stripped weights
        w = main_weight(model.get_layer(name)).numpy()
        assert abs(np.mean(w == 0) - 0.6) < 0.005 and value == pytest.approx(np.mean(w == 0))
    assert np.mean(model.get_layer("classifier").kernel.numpy() == 0) < 0.1  # excluded
    assert not any("prune" in type(l).__name__.lower() for l in model.layers)  # stripped


def test_gradient_criterion_prunes_other_weights_than_magnitude(tmp_path, small_bert_dir):
    """Same schedule and data; movement scores pick a different set than |w| does."""
    overlap = {}
    for criterion in ("magnitude", "gradient"):
        recipe, context, stages, model = stage_context(
            tmp_path / criterion, small_bert_dir,
            f"stages=[{{type: prune, steps: 12, frequency: 4, final_sparsity: 0.5, "
            f"min_weights: 0, include: [layer_0_intermediate], batch_size: 8, "
            f"learning_rate: 1.0e-4, criterion: {criterion}}}]")
        before = np.abs(main_weight(model.get_layer("layer_0_intermediate")).numpy())
        cfg, stage = stages[-1]
        pruned = stage.run(model, context).model
        zeros = main_weight(pruned.get_layer("layer_0_intermediate")).numpy() == 0
        smallest = before <= np.quantile(before, 0.5)  # what |w| at the start would prune
        overlap[criterion] = float(np.mean(zeros[smallest]))
        assert np.mean(zeros) == pytest.approx(0.5, abs=0.005)
    assert overlap["magnitude"] > 0.9, overlap  # short run: |w| barely moves
    assert overlap["gradient"] < overlap["magnitude"] - 0.1, overlap


def test_taylor_scores_come_from_the_distillation_gradients(tmp_path, small_bert_dir):
    """criterion taylor with alpha < 1: the distiller's step feeds the scores. With no
    scores top_k would keep the first indices, so the mask would be a prefix."""
    recipe, context, stages, dense = stage_context(
        tmp_path, small_bert_dir, "stages=[{type: prune, steps: 12, frequency: 4, "
                                  "final_sparsity: 0.5, min_weights: 0, "
                                  "include: [layer_0_intermediate], batch_size: 8, "
                                  "learning_rate: 1.0e-4, criterion: taylor, alpha: 0.0}]")
    before = dense.get_weights()
    stage = stages[-1][1]
    result = stage.run(dense, context)
    model, report = result.model, result.report
    # the teacher (the model entering the stage) is neither pruned nor trained
    assert all(np.array_equal(a, b) for a, b in zip(before, dense.get_weights()))
    assert all(l.trainable for l in model.layers)  # the frozen teacher shares no layer
    zeros = (main_weight(model.get_layer("layer_0_intermediate")).numpy() == 0).ravel()
    assert np.mean(zeros) == pytest.approx(0.5, abs=0.005)
    prefix = np.arange(zeros.size) >= zeros.size - int(zeros.sum())
    assert np.mean(zeros == prefix) < 0.9
    assert len(report["kl_to_teacher"]) == 2


def test_global_threshold_matches_a_sort():
    """The bisection over order-preserving int keys picks the same cut as sorting floats."""
    import tensorflow as tf
    from tfdeploy.stages.prune_scores import global_threshold, order_keys
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-8, 3, 5000),
                             [0.0, -0.0, 1e-30, -1e-30]]).astype(np.float32)
    keys = order_keys(tf.constant(scores)).numpy()
    assert (np.argsort(keys, kind="stable") == np.argsort(scores, kind="stable")).mean() > 0.999
    for keep in (1, 7, 2500, 5003):
        kept = keys >= global_threshold(tf.constant(keys), keep).numpy()
        assert kept.sum() == keep  # no ties among these scores
        assert scores[kept].min() >= np.sort(scores)[-keep]


def test_global_scope_reaches_overall_sparsity(tmp_path, small_bert_dir):
    """scope: global ranks every layer's Taylor scores together: the overall sparsity is
    the target while layers end up with different sparsities."""
    report, model, _ = run_stage(tmp_path, small_bert_dir,
                                "stages=[{type: prune, steps: 13, frequency: 5, "
                                "final_sparsity: 0.7, min_weights: 0, exclude: [classifier], "
                                "batch_size: 8, learning_rate: 1.0e-4, criterion: taylor, "
                                "scope: global}]")
    assert report["sparsity"] == pytest.approx(0.7, abs=0.001)
    zeros = total = 0
    for name, value in report["layers"].items():
        w = main_weight(model.get_layer(name)).numpy()
        zeros, total = zeros + np.sum(w == 0), total + w.size
    assert zeros / total == pytest.approx(0.7, abs=0.001)  # from the stripped weights
    values = sorted(report["layers"].values())
    assert values[-1] - values[0] > 0.05, report["layers"]


def test_per_pattern_targets_and_m_by_n(tmp_path, small_bert_dir):
    report, model, _ = run_stage(tmp_path, small_bert_dir,
                                "stages=[{type: prune, steps: 6, frequency: 2, min_weights: 0, "
                                "include: ['layer_.*'], final_sparsity: 0.5, "
                                "targets: {'layer_1_.*': 0.75}, batch_size: 8}]")
    assert report["layers"]["layer_0_intermediate"] == pytest.approx(0.5, abs=0.005)
    assert report["layers"]["layer_1_intermediate"] == pytest.approx(0.75, abs=0.005)
    report, model, _ = run_stage(tmp_path, small_bert_dir,
                                "stages=[{type: prune, steps: 6, frequency: 2, min_weights: 0, "
                                "include: ['layer_0_intermediate'], m_by_n: [2, 4], "
                                "batch_size: 8}]")
    kernel = model.get_layer("layer_0_intermediate").kernel.numpy()  # [in, out]
    groups = (kernel != 0).reshape(-1, 4, kernel.shape[1])  # 4 consecutive inputs per output
    assert (groups.sum(axis=1) <= 2).all()


def test_impossible_configs(tmp_path, small_bert_dir):
    from tfdeploy.recipe import load_recipe
    import os
    from conftest import ROOT
    tiny = os.path.join(ROOT, "recipes", "tiny.yaml")
    for override, path, message in [
        ("stages=[{type: prune, final_sparsity: 1.0}]", "stages[0].final_sparsity",
         "is not in [0, 1)"),
        ("stages=[{type: prune, initial_sparsity: 0.6, final_sparsity: 0.5}]",
         "stages[0].initial_sparsity", "above final_sparsity"),
        ("stages=[{type: prune, m_by_n: [4, 2]}]", "stages[0].m_by_n", "0 < M < N"),
        ("stages=[{type: prune, include: ['(']}]", "stages[0].include[0]", "invalid regex"),
        ("stages=[{type: prune, criterion: gradient, m_by_n: [2, 4]}]", "stages[0].m_by_n",
         "magnitude-only"),
        ("stages=[{type: prune, criterion: fisher}]", "stages[0].criterion", "taylor"),
        ("stages=[{type: prune, scope: global}]", "stages[0].scope", "gradient criterion"),
        ("stages=[{type: prune, criterion: taylor, scope: global, targets: {'a.*': 0.5}}]",
         "stages[0].targets", "conflict with scope: global"),
    ]:
        with pytest.raises(RecipeError) as err:
            load_recipe(tiny, [override])
        problem = err.value.problems[0]
        assert problem[0] == path and message in problem[1], err.value.format()
    with pytest.raises(StageError, match="m_by_n: not applicable to Embedding"):
        run_stage(tmp_path, small_bert_dir, "stages=[{type: prune, layer_types: [embedding], "
                                            "m_by_n: [2, 4], steps: 4}]")
    with pytest.raises(StageError, match="input dimension 2 is not divisible by 4"):
        select_m_by_n_on_narrow_layer()
    with pytest.raises(StageError, match="no layer selected"):
        run_stage(tmp_path, small_bert_dir, "stages=[{type: prune, include: [nothing], "
                                            "steps: 4}]")


def select_m_by_n_on_narrow_layer():
    """m_by_n on a layer whose input dimension (2) N (4) does not divide."""
    import tf_keras as keras
    from tfdeploy.recipe.validate import validate
    from tfdeploy.stages import STAGES
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(8, name="d")(inputs))
    cfg = validate(STAGES.get("prune").Config, {"type": "prune", "m_by_n": [1, 4],
                                                "min_weights": 0}, {})
    STAGES.get("prune")(cfg).chosen(model)
