"""Stage plugins: each optimization step of a recipe is one module here.

A stage is a class decorated ``@STAGES.register("type")`` with a ``Config`` dataclass (a
:class:`~tfdeploy.recipe.fields.StageConfig`) and ``run(model, context) -> StageResult``
(its model, what it did to it as :class:`~tfdeploy.traits.Traits`, and its report). The
pipeline hands it a model built inside ``context.strategy.scope()`` and the traits of that
model in ``context.traits``; the stage compiles and trains inside that scope too, and uses
``context`` for data at the global batch size.
"""
import tf_keras as keras

from tfdeploy.errors import StageError, TfdeployError
from tfdeploy.recipe.fields import Registry, StageConfig, import_submodules

STAGES = Registry("stage")
StageConfig.registry = STAGES


class Stage:
    Config = StageConfig
    # Why this stage cannot run under TPUStrategy, or None if it can (plain Keras training).
    tpu_unsupported = None
    # Plain Keras fit of one model: what ParameterServerStrategy's coordinator dispatches.
    runs_on_parameter_servers = False
    # Raised when the stage's code changes its output for the same config: part of the
    # stage cache key, so an older cached output is not reused (0 adds nothing to the key).
    revision = 0

    def __init__(self, config):
        self.config = config

    def run(self, model, context):
        """A StageResult: the optimized model (stripped of training-only wrappers), its
        traits (from ``context.traits``, the entering model's) and a report."""
        raise NotImplementedError

    def plain_model(self, model):
        """This stage's ``model`` in plain layers with its float weights, as a user continues
        from it (its Keras 3 copy); the default is the model itself."""
        return model

    def preflight(self, model, context):
        """[(layer name, what this stage will do to it or why it skips it)] for --dry_run."""
        return [(layer.name, "trained") for layer in model.layers if layer.trainable_weights]

    def wrapped_layers(self, model, context):
        """Names of the layers this stage wraps with TFMOT (none: it only trains)."""
        return []

    def wrap_problems(self, model, context):
        """[(layer, why TFMOT cannot wrap it)] for the layers this stage would wrap."""
        from tfdeploy.selection import wrap_problems

        names = self.wrapped_layers(model, context)
        return wrap_problems(model, names) if names else []

    # A first stage whose teacher is 'previous' would learn from the untrained model.
    previous_teacher_needs_earlier_stage = False

    def check(self, context):
        """Refuse, before any work, what this stage cannot do with this model and data
        (raise StageError naming the field)."""

    def planned_traits(self, entering):
        """The traits of this stage's output, as far as they are known before it runs
        (``--dry_run`` shows later stages' choices from them)."""
        return entering

    def teacher_spec(self):
        """The teacher this stage learns from ('previous', a stage name, a path) or None."""
        return None

    @classmethod
    def load_scopes(cls):
        """Context managers needed to load this stage's saved model (e.g. QAT wrappers)."""
        return []


def own_copy(model):
    """``model`` with its own layers and the same weights (call inside the strategy scope).
    TFMOT's prune and cluster wrappers train the very layer objects they wrap: without a
    copy they would also change the model entering the stage, which may be a teacher."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def all_load_scopes():
    """Every stage type's load scopes: what a saved model of unknown stages needs."""
    return [scope for name in STAGES.names() for scope in STAGES.get(name).load_scopes()]


def create(config):
    return STAGES.get(config.type)(config)


def check_wrappable(stage_list, model, context):
    """Refuse, before any training, stages that would wrap layers TFMOT cannot wrap (each
    one named, with why); stages that only train, and the exports, still work."""
    refused = [f"stage {cfg.name} ({cfg.type}): {layer}: {why}"
               for cfg, stage in stage_list
               for layer, why in stage.wrap_problems(model, context)]
    if refused:
        raise StageError("TFMOT cannot wrap these layers:\n  " + "\n  ".join(refused))


def check_parameter_server(stage_list):
    """Refuse stages a parameter_server cluster cannot run, before connecting to it."""
    refused = [f"stage {cfg.name} ({cfg.type})" for cfg, stage in stage_list
               if not stage.runs_on_parameter_servers]
    if refused:
        raise TfdeployError("parameter_server runs train stages only (TFMOT wrappers and a "
                            "teacher beside the student are not placed on ps tasks); run "
                            "these on one machine, from the saved train stage (--resume "
                            "reuses it):\n  " + "\n  ".join(refused))


def check_strategy(stage_list, strategy_info):
    """Refuse, before any work, stages that cannot run on the chosen devices."""
    if strategy_info.get("device_kind") != "tpu":
        return
    refused = [f"stage {cfg.name} ({cfg.type}): {stage.tpu_unsupported}"
               for cfg, stage in stage_list if stage.tpu_unsupported]
    if refused:
        raise TfdeployError("these stages cannot run on TPU; run them with --strategy "
                            "mirrored or cpu and export from there:\n  " + "\n  ".join(refused))


import_submodules(__name__, __path__)
