"""Which model a distilling stage learns from: ``teacher`` in distill and qat.

``previous`` is the model entering the stage; the name of an earlier stage of the same
recipe is that stage's output (e.g. ``finetune``: a pruned model's QAT learns from the dense
fine-tuned model, not from its own pruned self); anything else is a saved stage directory
or its model file.
"""
import dataclasses
import os

from tfdeploy import checkpoint
from tfdeploy.errors import StageError
from tfdeploy.recipe.fields import field
from tfdeploy.stages import all_load_scopes


@dataclasses.dataclass(kw_only=True)
class Distillation:
    """The fields of a stage that can learn from a teacher: its loss is alpha * CE(labels)
    + (1 - alpha) * T^2 * KL(teacher / T || student / T)."""

    alpha: float = field(1.0, ge=0, le=1, doc="Weight of the label cross-entropy; 1 - alpha "
                                              "weighs a KL to the teacher (1: no teacher).")
    temperature: float = field(1.0, gt=0, doc="Softmax temperature of that KL term.")
    teacher: str = field("previous", doc="The teacher: 'previous' (the model entering the "
                                         "stage), an earlier stage's name (e.g. finetune: "
                                         "the dense model before pruning) or a saved stage "
                                         "directory / .h5 file.")

    def check(self):
        if self.alpha == 1 and self.teacher != "previous":
            yield ("teacher", f"{self.teacher!r} would teach nothing: alpha is 1 (no KL "
                              f"term); set alpha below 1 or leave teacher out")


class DistillingStage:
    """A stage whose Config has :class:`Distillation` fields: its teacher, when it has one."""

    def teacher_spec(self):
        return self.config.teacher if self.config.alpha < 1 else None


def default(name, value):
    """Distillation field ``name`` with another default (its doc and bounds kept), for a
    stage whose purpose is distillation."""
    declared = Distillation.__dataclass_fields__[name]
    return dataclasses.field(default=value, metadata=declared.metadata)


def load_teacher(spec, model, context, stage):
    if spec == "previous":
        return model
    if spec in context.stage_outputs:
        return context.stage_outputs[spec]
    path = spec if os.path.isdir(spec) else os.path.dirname(spec)
    if not os.path.exists(os.path.join(path, checkpoint.MODEL_FILE)):
        known = ", ".join(context.stage_outputs) or "none before this stage"
        raise StageError(f"{stage}: teacher {spec!r} is neither an earlier stage ({known}) "
                         f"nor a saved model ({checkpoint.MODEL_FILE} missing)")
    # any stage may have saved it: a QAT model needs its wrappers' scope to load
    return checkpoint.load(path, context.strategy, context.plugin.custom_objects(),
                           scopes=all_load_scopes())


def check_teachers(stage_list):
    """Refuse, before any work, a teacher that names no earlier stage and no saved model."""
    for index, (cfg, stage) in enumerate(stage_list):
        spec = stage.teacher_spec()
        earlier = [c.name for c, _ in stage_list[:index]]
        if spec == "previous" and not earlier and stage.previous_teacher_needs_earlier_stage:
            raise StageError(f"stage {cfg.name}: teacher 'previous' needs an earlier stage "
                             f"that trains the teacher (e.g. train); or name a saved model")
        if spec in (None, "previous"):
            continue
        if spec not in earlier and not os.path.exists(spec):
            raise StageError(f"stage {cfg.name}: teacher {spec!r} is neither an earlier stage "
                             f"({', '.join(earlier) or 'none'}) nor a saved model path")
