"""The prune stage's gradient criterion: rank weights by a training score instead of |w|.

TFMOT ranks weights by magnitude only. Here each pruned layer keeps one score per weight,
accumulated at every training step from the gradient summed over replicas (so every
replica computes the same masks), and TFMOT's own schedule, mask variables, masking and
``strip_pruning`` do the rest: at each mask update the lowest-scoring weights are masked.
The result is the same stripped Keras model, exportable like magnitude pruning.

- ``gradient``, movement scores (Sanh et al. 2020, "Movement Pruning"): S += -w * dL/dw.
  Weights that training pushes towards zero score low, whatever their size; better than
  magnitude at high sparsity in that paper, when pruning over many epochs. In our short
  budget on fine-tuned MiniLM it collapsed (bench/prune_criteria.py).
- ``taylor``: S += |w * dL/dw|, the first-order estimate of the loss change from removing w.

``scope: global`` ranks the scores of all pruned layers together (one threshold), so the
overall sparsity follows the schedule and layers the loss depends on more keep more weights.
"""
import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

CRITERIA = ("gradient", "taylor")  # prune.criterion values handled here


def order_keys(score):
    """int32 keys ordered exactly like the float32 scores (negative ones included), so a
    threshold can be found by bisection over integers instead of sorting millions of floats."""
    bits = tf.bitcast(tf.cast(score, tf.float32), tf.int32)
    return tf.bitwise.bitwise_xor(
        bits, tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 0x7fffffff))


def global_threshold(keys, keep):
    """The largest int32 key t with at least ``keep`` of ``keys`` >= t (32 bisection steps)."""
    def body(lo, hi):  # bounds in int64 (hi may be 2**31); every mid fits int32
        mid = (lo + hi) // 2
        count = tf.reduce_sum(tf.cast(keys >= tf.cast(mid, keys.dtype), tf.int64))
        enough = count >= tf.cast(keep, tf.int64)
        return tf.where(enough, mid, lo), tf.where(enough, hi, mid)

    lo, _ = tf.while_loop(lambda lo, hi: hi - lo > 1, body,
                          (tf.constant(-2 ** 31, tf.int64), tf.constant(2 ** 31, tf.int64)))
    return lo


class GlobalCut:
    """One threshold key over every pruned layer's scores, computed once per mask update:
    the first layer updating at a step computes it (0.55 s for MiniLM's 10.6M scores), the
    other layers of that step read it back."""

    def __init__(self):
        self.scores = []
        # identical on every replica (the scores are), so one replica's copy is enough
        kw = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.step = tf.Variable(tf.constant(-1, tf.int64), name="global_cut_step", **kw)
        self.key = tf.Variable(tf.constant(0, tf.int64), name="global_cut_key", **kw)

    def threshold(self, step, sparsity):
        step = tf.cast(step, tf.int64)

        def compute():
            keys = tf.concat([tf.reshape(order_keys(s), [-1]) for s in self.scores], 0)
            n = tf.cast(tf.size(keys), tf.float32)
            keep = tf.cast(tf.maximum(tf.round(n * (1 - sparsity)), 1), tf.int64)
            key = global_threshold(keys, keep)
            with tf.control_dependencies([self.key.assign(key), self.step.assign(step)]):
                return tf.identity(key)

        return tf.cond(tf.equal(self.step, step), self.key.read_value, compute)


class ScorePruning(pruning_impl.Pruning):
    """TFMOT's Pruning with the mask chosen from ``scores`` (weight ref -> score variable).
    With a ``GlobalCut`` the threshold is shared by every pruned layer."""

    def __init__(self, scores, cut=None, **kwargs):
        super().__init__(**kwargs)
        self._scores = scores
        self._cut = cut

    def _maybe_update_block_mask(self, weights):
        score = tf.convert_to_tensor(self._scores[weights.ref()])
        step = self._step_fn()
        sparsity = self._pruning_schedule(step)[1]
        if self._cut is not None:
            mine = tf.cast(order_keys(score), tf.int64) >= self._cut.threshold(step, sparsity)
            lowest = tf.reduce_min(tf.where(mine, score, score.dtype.max))
            return tf.cast(lowest, weights.dtype), tf.cast(mine, weights.dtype)
        flat = tf.reshape(score, [-1])
        n = tf.size(flat)
        keep = tf.cast(tf.maximum(tf.round(tf.cast(n, tf.float32) * (1 - sparsity)), 1),
                       tf.int32)
        values, indices = tf.math.top_k(flat, k=keep)  # exactly `keep` survive, ties or not
        mask = tf.scatter_nd(indices[:, None], tf.ones_like(values), tf.reshape(n, [1]))
        return (tf.cast(values[-1], weights.dtype),
                tf.cast(tf.reshape(mask, tf.shape(weights)), weights.dtype))


def wrappers(model):
    return [l for l in model.layers if isinstance(l, pruning_wrapper.PruneLowMagnitude)]


def attach(model, strategy, scope="layer"):
    """Give every pruning wrapper score variables and ScorePruning; [(weight, score)].
    ``scope="global"``: every layer's mask comes from one threshold over all the scores."""
    pairs = []
    with strategy.scope():
        cut = GlobalCut() if scope == "global" else None
        for layer in wrappers(model):
            scores = {}
            for weight, _, _ in layer.pruning_vars:
                score = layer.add_weight(
                    "prune_score", shape=weight.shape, initializer="zeros", trainable=False,
                    dtype=tf.float32,
                    # identical on every replica (computed from all-reduced gradients)
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                scores[weight.ref()] = score
                pairs.append((weight, score))
                if cut is not None:
                    cut.scores.append(score)
            old = layer.pruning_obj
            layer.pruning_obj = ScorePruning(
                scores, cut,
                training_step_fn=old._step_fn, pruning_vars=layer.pruning_vars,
                pruning_schedule=layer.pruning_schedule, block_size=layer.block_size,
                block_pooling_type=layer.block_pooling_type)
    return pairs


def accumulate(pairs, kind, variables, grads):
    """Add this step's score to every (weight, score) pair; ``grads`` are the gradients
    of ``variables`` summed over replicas."""
    by_var = {v.ref(): g for v, g in zip(variables, grads)}
    for weight, score in pairs:
        grad = by_var.get(weight.ref())
        if grad is None:
            continue
        step = -weight * grad if kind == "gradient" else tf.abs(weight * grad)
        score.assign_add(tf.cast(step, score.dtype))


def _all_reduced(grads):
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    return grads


def gradient_hook(pairs, kind):
    """A ``(variables, grads) -> None`` hook for a train step that applies per-replica
    gradients itself (the distiller's): accumulates the scores from the summed gradients
    of the pruned weights only (the optimizer still aggregates all gradients)."""
    if kind not in CRITERIA:
        raise ValueError(f"unknown score {kind!r}")
    pruned = {w.ref() for w, _ in pairs}

    def hook(variables, grads):
        chosen = [(v, g) for v, g in zip(variables, grads)
                  if g is not None and v.ref() in pruned]
        summed = _all_reduced([g for _, g in chosen])
        accumulate(pairs, kind, [v for v, _ in chosen], summed)

    return hook


def install_train_step(model, pairs, kind):
    """Replace ``model.train_step`` with one that also accumulates the scores."""
    if kind not in CRITERIA:
        raise ValueError(f"unknown score {kind!r}")

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        optimizer = model.optimizer
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
            scaled = optimizer.get_scaled_loss(loss) \
                if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer) else loss
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
            grads = optimizer.get_unscaled_gradients(grads)
        # Sum once here (as the optimizer would) so scores see the global gradient.
        grads = _all_reduced(grads)
        accumulate(pairs, kind, variables, grads)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, variables) if g is not None],
            skip_gradients_aggregation=True)
        return model.compute_metrics(x, y, y_pred, sample_weight)

    model.train_step = train_step
