"""`prune`: magnitude (TFMOT) or gradient-based pruning on a schedule, then stripped.

The gradient criterion (movement or Taylor scores) lives in ``prune_scores``; it reuses
TFMOT's wrappers, schedule and stripping, and changes only which weights a mask keeps.

TFMOT only updates masks when ``(step - begin) % frequency == 0``, so an end step that the
frequency does not divide never reaches the final sparsity; the end step is aligned down
to the last step it does divide, and the measured sparsity is checked after the stage.
"""
import dataclasses
import re
from typing import Dict, List, Literal, Optional

import tensorflow_model_optimization as tfmot
import tf_keras as keras

from tfdeploy.distillation import fit_maybe_distilled
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.selection import LayerSelection, chosen, main_weight, plan, sparsity_report
from tfdeploy.stages import STAGES, Stage, own_copy, prune_scores, prune_xnnpack
from tfdeploy.stages.prune_scores import CRITERIA
from tfdeploy.stages.teacher import Distillation, DistillingStage
from tfdeploy.training import FitConfig, step_plan
from tfdeploy.traits import StageResult


@dataclasses.dataclass(kw_only=True)
class ScheduleConfig:
    schedule: Literal["polynomial", "constant"] = field(
        "polynomial", doc="polynomial: sparsity rises from initial to final (power 3); "
                          "constant: final sparsity from begin on.")
    initial_sparsity: float = field(0.0, ge=0, lt=1, doc="Sparsity at the begin step.")
    final_sparsity: float = field(0.5, ge=0, lt=1, doc="Sparsity reached at the end step.")
    begin_step: int = field(0, ge=0, doc="First pruning step.", unit="steps")
    end_step: int = field(-1, ge=-1, doc="Step the final sparsity is reached; -1 = 80% of "
                                         "the stage (the rest recovers accuracy).",
                          unit="steps")
    begin_epoch: Optional[float] = field(None, ge=0, doc="begin_step given in epochs "
                                                         "(converted with the global batch).",
                                         unit="epochs")
    end_epoch: Optional[float] = field(None, gt=0, doc="end_step given in epochs.",
                                       unit="epochs")
    frequency: int = field(100, ge=1, doc="Steps between mask updates.", unit="steps")

    def check(self):
        if self.initial_sparsity > self.final_sparsity:
            yield ("initial_sparsity", f"{self.initial_sparsity} is above final_sparsity "
                                       f"{self.final_sparsity}")
        if self.end_step >= 0 and self.end_step <= self.begin_step:
            yield ("end_step", f"{self.end_step} is not after begin_step {self.begin_step}")
        if self.begin_epoch is not None and self.end_epoch is not None and \
                self.end_epoch <= self.begin_epoch:
            yield ("end_epoch", f"{self.end_epoch} is not after begin_epoch "
                                f"{self.begin_epoch}")


def schedule_steps(cfg, context, total):
    """(begin, end, frequency) in steps, end aligned so the final sparsity is reached."""
    per_epoch = len(context.train) / context.global_batch(cfg.batch_size)
    begin = round(cfg.begin_epoch * per_epoch) if cfg.begin_epoch is not None else cfg.begin_step
    end = round(cfg.end_epoch * per_epoch) if cfg.end_epoch is not None else cfg.end_step
    if end < 0:
        end = max(begin + 1, int(total * 0.8))
    end = min(end, total - 1)  # the last step a mask update can happen in this stage
    if end <= begin:
        raise StageError(f"pruning schedule: end step {end} is not after begin step {begin} "
                         f"(the stage has {total} steps)")
    frequency = min(cfg.frequency, end - begin)
    end = begin + (end - begin) // frequency * frequency  # TFMOT prunes on these steps only
    return begin, end, frequency


def make_schedule(cfg, begin, end, frequency, final=None):
    final = cfg.final_sparsity if final is None else final
    if cfg.schedule == "constant":
        return tfmot.sparsity.keras.ConstantSparsity(final, begin, end, frequency)
    return tfmot.sparsity.keras.PolynomialDecay(cfg.initial_sparsity, final, begin, end,
                                                frequency=frequency)


@STAGES.register("prune")
class Prune(DistillingStage, Stage):
    tpu_unsupported = ("TFMOT's pruning wrapper updates its masks with merge_call, which "
                       "TPUStrategy does not support inside a replica")

    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig, ScheduleConfig, LayerSelection, Distillation):
        """Pruning with fine-tuning. Fit fields (epochs, learning_rate, ...) as in train."""

        targets: Dict[str, float] = field(factory=dict, doc="Per-layer final sparsity: "
                                                            "name regex -> sparsity (first "
                                                            "match wins).")
        block_size: List[int] = field(factory=lambda: [1, 1], doc="Prune blocks of this "
                                                                  "shape (structured).")
        m_by_n: Optional[List[int]] = field(None, doc="Structured M-of-N sparsity, e.g. "
                                                      "[2, 4]; overrides the sparsity "
                                                      "targets.")
        policy: Literal["none", "xnnpack"] = field(
            "none", doc="xnnpack: prune only the 1x1 convs of a CNN whose structure "
                        "XNNPACK's sparse inference takes (TFMOT's "
                        "PruneForLatencyOnXNNPack); --dry_run explains each layer.")
        criterion: Literal[("magnitude",) + CRITERIA] = field(
            "magnitude", doc="magnitude: TFMOT's |w|. Gradient criteria, scores summed over "
                             "every step, same schedule: gradient = movement (-w*dL/dw, "
                             "Sanh et al. 2020); taylor = first-order Taylor |w*dL/dw|.")
        scope: Literal["layer", "global"] = field(
            "layer", doc="layer: every layer reaches its own target; global (gradient "
                         "criteria): one score threshold across all pruned layers, so the "
                         "overall sparsity reaches final_sparsity and the layers the loss "
                         "depends on more keep more weights.")
        learning_rate: float = field(3e-5, gt=0, doc="Peak learning rate.")
        def check(self):
            yield from ScheduleConfig.check(self)
            yield from LayerSelection.check(self)
            yield from Distillation.check(self)
            for pattern, value in self.targets.items():
                if not 0 <= value < 1:
                    yield (("targets", pattern), f"{value} is not in [0, 1)")
            if self.m_by_n is not None and (len(self.m_by_n) != 2 or not
                                            0 < self.m_by_n[0] < self.m_by_n[1]):
                yield ("m_by_n", f"{self.m_by_n} is not [M, N] with 0 < M < N")
            if len(self.block_size) != 2 or min(self.block_size) < 1:
                yield ("block_size", f"{self.block_size} is not [rows, cols] >= 1")
            if self.scope == "global":
                if self.criterion == "magnitude":
                    yield ("scope", "global needs a gradient criterion (taylor or gradient): "
                                    "magnitudes are not comparable across layers")
                if self.targets:
                    yield ("targets", "per-layer targets conflict with scope: global")
            if self.criterion != "magnitude":
                for key, plain in (("block_size", self.block_size == [1, 1]),
                                   ("m_by_n", self.m_by_n is None),
                                   ("policy", self.policy == "none")):
                    if not plain:
                        yield (key, "is magnitude-only; criterion gradient scores single "
                                    "weights")

    def _cannot(self, layer):
        cfg = self.config
        if cfg.policy == "xnnpack":
            return prune_xnnpack.skip_reason(layer)
        if cfg.m_by_n:
            weight = main_weight(layer)
            n = cfg.m_by_n[1]
            if isinstance(layer, keras.layers.Embedding) or len(weight.shape) < 2:
                return f"m_by_n: not applicable to {type(layer).__name__}"
            if weight.shape[-2] % n:
                return f"m_by_n: input dimension {weight.shape[-2]} is not divisible by {n}"
        return None

    def target(self, name):
        for pattern, value in self.config.targets.items():
            if re.fullmatch(pattern, name):
                return value
        return self.config.final_sparsity

    def preflight(self, model, context):
        cfg, out = self.config, []
        for layer, chosen, reason in plan(model, cfg, self._cannot):
            if cfg.m_by_n:
                what = f"prune {cfg.m_by_n[0]}:{cfg.m_by_n[1]}"
            else:
                share = " overall (global threshold)" if cfg.scope == "global" else ""
                what = f"prune to {self.target(layer.name):.0%}{share} ({cfg.criterion})"
            out.append((layer.name, what if chosen else reason))
        return out

    def wrapped_layers(self, model, context):
        return [l.name for l, ok, _ in plan(model, self.config, self._cannot) if ok]

    def wrap_problems(self, model, context):
        """Also the structure XNNPACK's sparse inference needs, under policy xnnpack."""
        found = prune_xnnpack.structure_problems(model) if self.config.policy == "xnnpack" \
            else []
        return found + super().wrap_problems(model, context)

    def chosen(self, model):
        rows = plan(model, self.config, self._cannot)
        bad = [f"{l.name}: {r}" for l, ok, r in rows if r.startswith("m_by_n")]
        if bad:
            raise StageError("prune: m_by_n cannot apply to " + "; ".join(bad) +
                             " (exclude these layers)")
        return chosen(model, self.config, "prune", self._cannot)

    def run(self, model, context):
        cfg = self.config
        names = self.chosen(model)
        total, _, _ = step_plan(context, cfg)
        begin, end, frequency = schedule_steps(cfg, context, total)
        print(f"  pruning {len(names)} layers ({cfg.criterion}): steps {begin}..{end} every "
              f"{frequency} (stage: {total} steps)", flush=True)
        model, extra = self._prune(model, context, names, (begin, end, frequency))
        report = sparsity_report(model, names)
        report["schedule"] = {"begin": begin, "end": end, "frequency": frequency}
        report["criterion"] = cfg.criterion
        report.update(extra)
        self.verify(names, report)
        print(f"  measured sparsity {report['sparsity']:.4f}", flush=True)
        traits = dataclasses.replace(self.planned_traits(context.traits),
                                     sparsity=report["sparsity"])
        return StageResult(model, traits, report)

    def planned_traits(self, entering):
        cfg = self.config
        planned = 1 - cfg.m_by_n[0] / cfg.m_by_n[1] if cfg.m_by_n else cfg.final_sparsity
        return cfg.seen(dataclasses.replace(entering, sparsity=planned,
                                            sparsity_pattern=self.pattern()))

    def pattern(self):
        cfg = self.config
        if cfg.m_by_n:
            return f"{cfg.m_by_n[0]}:{cfg.m_by_n[1]}"
        if cfg.policy == "xnnpack":
            return "xnnpack"
        if cfg.block_size != [1, 1]:
            return f"block {cfg.block_size[0]}x{cfg.block_size[1]}"
        return "unstructured"

    def _prune(self, model, context, names, steps):
        cfg = self.config
        begin, end, frequency = steps
        kwargs = {"block_size": tuple(cfg.block_size)}
        if cfg.m_by_n:
            kwargs["sparsity_m_by_n"] = tuple(cfg.m_by_n)

        def wrap(layer):
            if layer.name in names:
                schedule = make_schedule(cfg, begin, end, frequency, self.target(layer.name))
                return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule,
                                                                **kwargs)
            return layer

        with context.strategy.scope():
            student = own_copy(model)  # ``model`` stays dense: the teacher when alpha < 1
            # policy xnnpack: ``names`` are the 1x1 convs; its structure was checked before
            pruned = keras.models.clone_model(student, clone_function=wrap)
        hook = None
        if cfg.criterion != "magnitude":
            pairs = prune_scores.attach(pruned, context.strategy, cfg.scope)
            if cfg.alpha < 1:  # the distiller's step computes the gradients: score there
                hook = prune_scores.gradient_hook(pairs, cfg.criterion)
            else:
                prune_scores.install_train_step(pruned, pairs, cfg.criterion)
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        # Never restore "best" weights from before the final sparsity was reached.
        fit_cfg = dataclasses.replace(cfg, keep_best=False)
        # alpha < 1: by default the dense model entering the stage teaches its pruned copy
        extra = fit_maybe_distilled(pruned, model, context, fit_cfg, "prune", callbacks,
                                    gradient_hook=hook)
        with context.strategy.scope():
            return tfmot.sparsity.keras.strip_pruning(pruned), extra

    def verify(self, names, report):
        """Fail loudly if the schedule did not reach its targets (e.g. a skipped update)."""
        cfg = self.config
        if cfg.scope == "global":
            got = report["sparsity"]
            if got + 0.005 < cfg.final_sparsity:
                raise StageError(f"prune: overall sparsity {got:.4f}, target "
                                 f"{cfg.final_sparsity:.4f} (schedule "
                                 f"{report['schedule']})")
            return
        for name in names:
            got = report["layers"][name]
            want = 1 - cfg.m_by_n[0] / cfg.m_by_n[1] if cfg.m_by_n else self.target(name)
            if got + 0.005 < want:
                raise StageError(f"prune: layer {name} reached sparsity {got:.4f}, target "
                                 f"{want:.4f} (schedule {report['schedule']})")
