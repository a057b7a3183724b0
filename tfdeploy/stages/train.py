"""`train`: fine-tune the whole model on the task (AdamW, warm-up + decay, clipping)."""
import dataclasses

from tfdeploy.recipe.fields import StageConfig
from tfdeploy.stages import STAGES, Stage
from tfdeploy.training import FitConfig, fit


@STAGES.register("train")
class Train(Stage):
    @dataclasses.dataclass(kw_only=True)
    class Config(StageConfig, FitConfig):
        """Fine-tuning of every trainable weight."""

    def run(self, model, context):
        fit(model, context, self.config)
        return model
