"""tf.data pipelines shared by all stages: encode once, shuffle, bucket by length, prefetch.

Most SST-2 training rows are short phrases, so padding every batch to ``max_length`` would
waste most of the compute; batches are grouped into a few padded lengths (``buckets``)
instead, which also keeps the number of distinct shapes (and so of retraces) small.
"""
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


class EncodedSplit:
    """One split, encoded once for a model: ragged token ids, labels, padded-length buckets."""

    def __init__(self, plugin, split, max_length, buckets):
        self.plugin = plugin
        ids = plugin.encode(split.examples, max_length)["input_ids"]
        self.lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        self.flat = np.concatenate(ids).astype(np.int32) if len(ids) else np.zeros(0, np.int32)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.labels = np.asarray(split.labels, np.int32)
        self.boundaries = sorted({b for b in buckets if b < max_length} | {max_length})

    def __len__(self):
        return len(self.labels)

    def ids(self, i):
        return self.flat[self.starts[i]:self.starts[i] + self.lengths[i]]

    def padded_length(self, length):
        return next(b for b in self.boundaries if length <= b)

    def length_shares(self):
        """{padded length: share of the rows}: the lengths this split is run at."""
        padded = [self.padded_length(n) for n in self.lengths]
        return {int(b): padded.count(b) / len(padded) for b in self.boundaries
                if b in padded}

    def _features(self, ids, labels):
        return self.plugin.features(ids), labels

    def train_dataset(self, global_batch, seed, shuffle=True, repeat=True):
        """Shuffled, length-bucketed batches of exactly ``global_batch`` examples."""
        flat, starts = tf.constant(self.flat), tf.constant(self.starts)
        lengths, labels = tf.constant(self.lengths), tf.constant(self.labels)

        def example(i):
            return flat[starts[i]:starts[i] + lengths[i]], labels[i]

        ds = tf.data.Dataset.range(len(self))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.map(example, num_parallel_calls=AUTOTUNE)
        ds = ds.bucket_by_sequence_length(
            lambda ids, _: tf.shape(ids)[0],
            bucket_boundaries=[b + 1 for b in self.boundaries],
            bucket_batch_sizes=[global_batch] * (len(self.boundaries) + 1),
            pad_to_bucket_boundary=True, drop_remainder=True)
        return ds.map(self._features, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def eval_order(self):
        """Example order for evaluation: by length, so batches need little padding."""
        return np.argsort(self.lengths, kind="stable")

    def eval_batches(self, global_batch):
        """Yield (order slice, padded ids) per batch, in ``eval_order``."""
        order = self.eval_order()
        padded_lengths = np.array([self.padded_length(n) for n in self.lengths[order]])
        start = 0
        while start < len(order):
            # A batch never spans two buckets: cut where the padded length changes.
            end = min(start + global_batch, len(order))
            same = np.nonzero(padded_lengths[start:end] != padded_lengths[start])[0]
            end = start + same[0] if len(same) else end
            idx = order[start:end]
            length = padded_lengths[start]
            batch = np.zeros((len(idx), length), np.int32)
            for row, i in enumerate(idx):
                seq = self.ids(i)
                batch[row, :len(seq)] = seq
            yield idx, batch
            start = end

    def eval_dataset(self, global_batch, with_labels=False):
        """(dataset of feature dicts, order): predictions come out in ``order``.

        ``with_labels`` adds the labels (for ``fit``'s validation_data)."""
        parts, order = [], []
        for length in self.boundaries:  # one padded array per bucket, batched
            idx = [i for i in self.eval_order() if self.padded_length(self.lengths[i]) == length]
            if not idx:
                continue
            batch = np.zeros((len(idx), length), np.int32)
            for row, i in enumerate(idx):
                batch[row, :self.lengths[i]] = self.ids(i)
            labels = self.labels[idx]
            part = tf.data.Dataset.from_tensor_slices((batch, labels) if with_labels else batch)
            parts.append(part.batch(global_batch))
            order.extend(idx)
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        fn = self._features if with_labels else self.plugin.features
        return ds.map(fn, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE), np.asarray(order)

    def numpy_batches(self, global_batch):
        """Eval batches as numpy feature dicts, for runtimes other than TF."""
        for idx, batch in self.eval_batches(global_batch):
            yield idx, {k: np.asarray(v) for k, v in self.plugin.features(batch).items()}

    def representative(self, count=100, seed=0):
        """Calibration samples (one example per step) drawn from this split, each padded to
        the longest bucket: the calibrator cannot resize between samples of different
        lengths, and padding is masked out anyway."""
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self), size=min(count, len(self)), replace=False)
        length = self.boundaries[-1]

        def gen():
            for i in picks:
                ids = np.zeros((1, length), np.int32)
                seq = self.ids(i)
                ids[0, :len(seq)] = seq
                yield {k: np.asarray(v) for k, v in self.plugin.features(ids).items()}

        return gen


class DenseSplit:
    """One split of fixed-shape inputs (e.g. images): no bucketing needed."""

    def __init__(self, plugin, split, augment=None):
        self.plugin, self.augment = plugin, augment
        self.inputs = plugin.encode(split.examples, None)  # {name: ndarray}
        labels = np.asarray(split.labels)  # class ids, or real targets (ratings)
        self.labels = labels.astype(np.int32 if labels.dtype.kind in "iu" else np.float32)

    def __len__(self):
        return len(self.labels)

    def train_dataset(self, global_batch, seed, shuffle=True, repeat=True):
        ds = tf.data.Dataset.from_tensor_slices((self.inputs, self.labels))
        if shuffle:
            ds = ds.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        if self.augment is not None:
            augment = self.augment
            seeds = tf.data.Dataset.random(seed=seed).batch(2)  # one stateless seed per row

            def apply(pair, row_seed):
                inputs, label = pair
                return {k: augment(v, row_seed) for k, v in inputs.items()}, label

            ds = tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=AUTOTUNE)
        return ds.batch(global_batch, drop_remainder=True).prefetch(AUTOTUNE)

    def eval_dataset(self, global_batch, with_labels=False):
        ds = tf.data.Dataset.from_tensor_slices((self.inputs, self.labels) if with_labels
                                                else self.inputs)
        return ds.batch(global_batch).prefetch(AUTOTUNE), np.arange(len(self))

    def numpy_batches(self, global_batch):
        for start in range(0, len(self), global_batch):
            idx = np.arange(start, min(start + global_batch, len(self)))
            yield idx, {k: v[idx] for k, v in self.inputs.items()}

    def representative(self, count=100, seed=0):
        picks = np.random.default_rng(seed).choice(len(self), min(count, len(self)), False)

        def gen():
            for i in picks:
                yield {k: v[i:i + 1] for k, v in self.inputs.items()}

        return gen


def encode_split(plugin, split, data_cfg, augment=None):
    """The split in the form the model reads: token sequences (bucketed) or dense arrays.
    ``augment`` (the data source's, for the training split only) perturbs dense rows."""
    if plugin.sequence_input:
        return EncodedSplit(plugin, split, data_cfg.max_length, data_cfg.buckets)
    return DenseSplit(plugin, split, augment)
