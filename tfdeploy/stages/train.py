"""`train`: fine-tune the whole model on the task (AdamW, warm-up + decay, clipping)."""
import dataclasses

from tfdeploy.recipe.fields import StageConfig
from tfdeploy.stages import STAGES, Stage
from tfdeploy.training import FitConfig, fit
from tfdeploy.traits import StageResult


@STAGES.register("train")
class Train(Stage):
    runs_on_parameter_servers = True
    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig):
        """Fine-tuning of every trainable weight."""

    def run(self, model, context):
        fit(model, context, self.config)
        return StageResult(model, self.planned_traits(context.traits))

    def planned_traits(self, entering):
        return self.config.seen(entering.trained_dense())
