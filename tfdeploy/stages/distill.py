"""`distill`: train a smaller student on the teacher's softened predictions (the loss and
its training loop: ``tfdeploy.distillation``). The teacher is the model from the previous
stage, an earlier stage by name, or a saved model. A BERT student can start from chosen teacher
layers (``student_layers: [0, 2, 4]``); otherwise ``student`` gives model fields for a
fresh one.
"""
import dataclasses
import functools
from typing import Any, Dict, List, Optional

from tfdeploy.recipe.fields import StageConfig, field
from tfdeploy.stages import STAGES, Stage
from tfdeploy.distillation import HiddenStates, fit_distilled, kl_first_last
from tfdeploy.stages.teacher import Distillation, default, load_teacher
from tfdeploy.traits import StageResult, Traits
from tfdeploy.training import FitConfig


@STAGES.register("distill")
class Distill(Stage):
    # the model entering a first stage is the untrained checkpoint: no teacher
    previous_teacher_needs_earlier_stage = True

    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig, Distillation):
        """Knowledge distillation into a smaller student. Fit fields as in train."""

        student_layers: Optional[List[int]] = field(
            None, doc="BERT: teacher encoder layers that initialise the student, in order "
                      "(e.g. [0, 2, 4] for a 3-layer student).")
        student: Dict[str, Any] = field(factory=dict, doc="Model fields for a fresh student "
                                                          "(same type as the recipe's model) "
                                                          "when student_layers is not set.")
        alpha: float = default("alpha", 0.5)
        temperature: float = default("temperature", 2.0)
        hidden_weight: float = field(0.0, ge=0, doc="Weight of a hidden-state loss: MSE "
                                                    "between student layer j and teacher "
                                                    "layer (j+1)*T/S - 1 (and embeddings), "
                                                    "over real tokens, with a learned "
                                                    "projection where widths differ. "
                                                    "0 = off.")
        learning_rate: float = field(1e-4, gt=0, doc="Peak learning rate.")
        augment: float = field(0.0, ge=0, lt=1, doc="Also learn the teacher's outputs on a "
                                                    "perturbed copy of each batch (BERT: "
                                                    "each word piece masked with this "
                                                    "probability); the copy has no label "
                                                    "loss. Doubles the step cost. 0 = off.")

        def check(self):
            if self.student_layers is None and not self.student:
                yield ("student_layers", "give student_layers (from the teacher) or student "
                                         "(fields of a fresh model)")
            if self.student_layers is not None and self.student:
                yield ("student", "use either student_layers or student, not both")
            if self.augment and self.alpha == 1:
                yield ("augment", "the augmented copies learn only the teacher's KL, which "
                                  "alpha: 1 switches off")

    def preflight(self, model, context):
        cfg = self.config
        what = (f"student from teacher layers {cfg.student_layers}" if cfg.student_layers
                else f"fresh student {cfg.student}")
        return [("(teacher)", f"{cfg.teacher}: frozen"), ("(student)", what)]

    def teacher_spec(self):
        return self.config.teacher

    def check(self, context):
        cfg, plugin = self.config, context.plugin
        if cfg.student_layers is not None:
            plugin.check_student_layers(cfg.student_layers)
        else:
            self.student_config(plugin)

    def teacher(self, model, context):
        return load_teacher(self.config.teacher, model, context, "distill")

    def student(self, teacher, context):
        cfg = self.config
        plugin = context.plugin
        with context.strategy.scope():
            if cfg.student_layers is not None:
                plugin.require("student_layers", "distill: student_layers (or use student:)")
                return plugin.student_from(teacher, cfg.student_layers)
            return plugin.variant(self.student_config(plugin)).build()

    def student_config(self, plugin):
        """The student's model config: the teacher's fields with ``student`` on top."""
        from tfdeploy.errors import RecipeError
        from tfdeploy.recipe.validate import validate

        fields = {**dataclasses.asdict(plugin.config), **self.config.student}
        try:
            return validate(type(plugin.config), fields, {})
        except RecipeError as e:
            raise RecipeError([(f"stages.{self.config.name}.student{'.' + p if p else ''}", m, w)
                               for p, m, w in e.problems]) from None

    def run(self, model, context):
        cfg = self.config
        teacher = self.teacher(model, context)
        student = self.student(teacher, context)
        print(f"  teacher {teacher.count_params():,} parameters -> student "
              f"{student.count_params():,}", flush=True)

        hidden = None
        if cfg.hidden_weight:
            context.plugin.require("hidden_states", "distill: hidden_weight")
            with context.strategy.scope():
                hidden = HiddenStates(context.plugin, student, teacher, cfg.hidden_weight)
        augment = None
        if cfg.augment:
            context.plugin.require("augment", "distill: augment")
            augment = functools.partial(context.plugin.augment, rate=cfg.augment)
        history = fit_distilled(student, teacher, context, cfg, hidden=hidden, augment=augment)
        kl_first, kl_last = kl_first_last(history)
        report = {"teacher_params": int(teacher.count_params()),
                  "student_params": int(student.count_params()),
                  "kl_first": kl_first, "kl_last": kl_last}
        if hidden is not None:
            report["hidden_pairs"] = hidden.pairs
            report["hidden_mse"] = [history["hidden_mse"][0], history["hidden_mse"][-1]]
        return StageResult(student, self.planned_traits(context.traits), report)

    def planned_traits(self, entering):
        return self.config.seen(Traits(distilled=True))  # a new, dense, float student
