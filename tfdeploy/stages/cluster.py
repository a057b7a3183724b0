"""`cluster`: weight clustering (TFMOT) with fine-tuning, then stripped.

Each selected weight matrix is reduced to ``number_of_clusters`` shared values; after a
``prune`` stage ``preserve_sparsity`` keeps the zeros as their own cluster. The stage
records the distinct values per layer, measured from the stripped weights.
"""
import dataclasses
from typing import Literal

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.selection import LayerSelection, chosen, main_weight, plan, sparsity_report
from tfdeploy.stages import STAGES, Stage, own_copy
from tfdeploy.stages.fold_bn import fold_batch_norms
from tfdeploy.training import FitConfig, fit
from tfdeploy.traits import StageResult

INITS = {"kmeans_plus_plus": "KMEANS_PLUS_PLUS", "linear": "LINEAR",
         "density_based": "DENSITY_BASED", "random": "RANDOM"}


@STAGES.register("cluster")
class Cluster(Stage):
    tpu_unsupported = ("TFMOT 0.8.1 supports clustering on CPU/GPU only (no TPU support "
                       "documented or tested)")

    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig, LayerSelection):
        """Weight clustering with fine-tuning. Fit fields as in train."""

        number_of_clusters: int = field(16, ge=2, le=256, doc="Shared values per weight "
                                                              "matrix.")
        centroid_init: Literal[tuple(INITS)] = field("kmeans_plus_plus",
                                                     doc="How centroids start.")
        preserve_sparsity: Literal["auto", "yes", "no"] = field(
            "auto", doc="Keep pruned zeros as zeros; auto = yes after a prune stage.")
        learning_rate: float = field(1e-5, gt=0, doc="Peak learning rate.")

    @staticmethod
    def _cannot(layer):
        # TFMOT 0.8.1's clustering registry lists no clusterable weight for depthwise convs:
        # wrapped, they would train on with every value distinct.
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return "skipped: TFMOT clusters no weight of a DepthwiseConv2D"
        return None

    def preflight(self, model, context):
        n = self.config.number_of_clusters
        return [(l.name, f"cluster to {n} values" if ok else reason)
                for l, ok, reason in plan(model, self.config, self._cannot)]

    def wrapped_layers(self, model, context):
        return [l.name for l, ok, _ in plan(model, self.config, self._cannot) if ok]

    def run(self, model, context):
        cfg = self.config
        names = chosen(model, cfg, "cluster", self._cannot)
        preserve = self.preserves(context.traits)
        before = sparsity_report(model, names)
        params = {"number_of_clusters": cfg.number_of_clusters,
                  "cluster_centroids_init": getattr(tfmot.clustering.keras.CentroidInitialization,
                                                    INITS[cfg.centroid_init]),
                  "preserve_sparsity": preserve}
        print(f"  clustering {len(names)} layers to {cfg.number_of_clusters} values"
              f"{' (sparsity preserved)' if preserve else ''}", flush=True)

        def wrap(layer):
            if layer.name in names:
                return tfmot.clustering.keras.cluster_weights(layer, **params)
            return layer

        with context.strategy.scope():
            # Batch norms folded first: the shared values are then the ones the int8 conv
            # stores. Folded later (by qat), each output channel's BN scale would multiply
            # them, and the cluster-preserving QAT kept none of them (measured: 16 values
            # per kernel became 22-77 per channel in the int8 file).
            model, folded = fold_batch_norms(own_copy(model))
            clustered = keras.models.clone_model(model, clone_function=wrap)
        # Best-weights restore is safe here: every evaluation sees clustered weights.
        fit(clustered, context, cfg)
        with context.strategy.scope():
            model = tfmot.clustering.keras.strip_clustering(clustered)
        unique = {n: int(np.unique(main_weight(model.get_layer(n)).numpy()).size)
                  for n in names}
        after = sparsity_report(model, names)
        report = {"clusters": cfg.number_of_clusters, "unique_weights": unique,
                  "folded_batch_norms": folded,
                  "preserve_sparsity": preserve, "sparsity": after["sparsity"]}
        too_many = {n: u for n, u in unique.items() if u > cfg.number_of_clusters}
        if too_many:
            raise StageError(f"cluster: layers kept more than {cfg.number_of_clusters} "
                             f"values: {too_many}")
        if preserve and after["sparsity"] + 0.005 < before["sparsity"]:
            raise StageError(f"cluster: sparsity fell from {before['sparsity']:.4f} to "
                             f"{after['sparsity']:.4f} despite preserve_sparsity")
        return StageResult(model, self.planned_traits(context.traits), report)

    def planned_traits(self, entering):
        kept = entering if self.preserves(entering) else entering.trained_dense()
        return self.config.seen(dataclasses.replace(kept,
                                                    clusters=self.config.number_of_clusters))

    def preserves(self, entering):
        """Keep the zeros of a pruned model as their own cluster?"""
        cfg = self.config
        return cfg.preserve_sparsity == "yes" or (cfg.preserve_sparsity == "auto"
                                                  and entering.sparse)
