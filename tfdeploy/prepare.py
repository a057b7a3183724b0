"""Before a run writes anything: options, the stages chosen, data and model prepared, and
every check that can refuse bad input (``--dry_run`` stops after :func:`preflight`)."""
import dataclasses
import os

from tfdeploy import data as data_plugins, export, models, stages, strategy as strategies
from tfdeploy.context import Context
from tfdeploy.data.pipeline import encode_split
from tfdeploy.errors import RecipeError, TfdeployError
from tfdeploy.stages.teacher import check_teachers
from tfdeploy.traits import Traits


@dataclasses.dataclass
class Options:
    output_dir: str = ""
    strategy: str = ""
    only: tuple = ()          # --stages: run just these stages (in recipe order)
    start_from: str = ""      # --from: reuse cached outputs before this stage
    resume: bool = False
    dry_run: bool = False


def select_stages(recipe, opts):
    names = [s.name for s in recipe.stages]
    for name in list(opts.only) + ([opts.start_from] if opts.start_from else []):
        if name not in names:
            raise TfdeployError(f"no stage named {name!r} in the recipe (stages: "
                                f"{', '.join(names) or 'none'})")
    chosen = [s for s in recipe.stages if not opts.only or s.name in opts.only]
    return chosen


def prepare(recipe, opts):
    """Everything that can fail on bad input, before anything is written."""
    chosen = select_stages(recipe, opts)
    stage_list = [(s, stages.create(s)) for s in chosen]
    if (opts.strategy or recipe.distribution.strategy) == "parameter_server":
        stages.check_parameter_server(stage_list)  # before waiting for the cluster
    strategy, info = strategies.create(recipe.distribution, opts.strategy or None)
    source = data_plugins.create(recipe.data, recipe.seed)
    models.check_data(recipe.model, recipe.data.type, source.gives)
    task = source.load()
    data_files = source.files()
    plugin = models.create(recipe.model, task.num_labels)
    plugin.adapt(task)
    augment = source.augmentation()
    train = encode_split(plugin, task.train, recipe.data, augment)
    validation = encode_split(plugin, task.validation.take(recipe.evaluate.max_examples),
                              recipe.data)
    selection = encode_split(plugin, task.selection, recipe.data) if task.selection else None
    context = Context(recipe, strategy, info, plugin, task, train, validation, selection,
                      run_dir="",
                      is_chief=strategies.is_chief(strategy), data_files=data_files,
                      encode_train=lambda split: encode_split(plugin, split, recipe.data,
                                                              augment))
    plugin.check_trainable([s.name for s in chosen])
    check_benchmark(recipe, plugin)
    stages.check_strategy(stage_list, info)
    check_teachers(stage_list)
    for cfg, stage in stage_list:
        stage.check(context)
    check_output_paths(recipe, opts)
    return context, stage_list


def check_benchmark(recipe, plugin):
    b = recipe.benchmark
    if b.enabled and b.lengths == "validation" and not plugin.sequence_input:
        raise RecipeError([("benchmark.lengths", f"validation times the padded lengths of "
                            f"token sequences; model type {recipe.model.type} takes "
                            f"fixed-shape inputs (use fixed)", None)])


def preflight(context, stage_list):
    with context.strategy.scope():
        model = context.plugin.build()
    task = context.task
    held = len(context.selection) if context.selection else 0
    print(f"data: {len(task.train) + held} train / {len(context.validation)} validation "
          f"examples, labels {task.label_names}")
    print(f"  {held} of the train rows held out as the selection split (chooses "
          f"checkpoints); the validation split is only reported")
    print(f"model: {model.name}, {model.count_params():,} parameters, "
          f"{len(model.layers)} layers")
    print(f"strategy: {context.strategy_info['strategy']} "
          f"({context.strategy_info['replicas']} replica(s))")
    traits = Traits()
    for cfg, stage in stage_list:
        print(f"stage {cfg.name} ({cfg.type}):")
        here = dataclasses.replace(context, stage_name=cfg.name, traits=traits)
        for layer, action in stage.preflight(model, here):
            print(f"  {layer:40s} {action}")
        for layer, why in stage.wrap_problems(model, here):
            print(f"  {layer:40s} cannot wrap: {why}")
        traits = stage.planned_traits(traits)
    stages.check_wrappable(stage_list, model, context)
    export.check_formats(context.recipe.export.formats,
                         planned_exports(context.recipe, stage_list))
    for name in context.recipe.export.formats:
        for line in export.get(name).dry_run(model, context.recipe):
            print(line if line.startswith(" ") else f"export {line}")
    return model


def planned_exports(recipe, stage_list):
    """[(stage name, planned traits)] of the stages whose models are exported: the last
    one, and with ``benchmark.stages: all`` every one."""
    traits, planned = Traits(), []
    for cfg, stage in stage_list:
        traits = stage.planned_traits(traits)
        planned.append((cfg.name, traits))
    if not planned:
        return [("input", traits)]
    return planned if recipe.benchmark.stages == "all" else planned[-1:]


def check_output_paths(recipe, opts):
    """Refuse, before any work, output folders that are files or cannot be made."""
    for what, path in (("--output_dir" if opts.output_dir else "output.dir",
                        opts.output_dir or recipe.output.dir), ("export.dir", recipe.export.dir)):
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe.rstrip(os.sep))
        if probe and not os.path.isdir(probe):
            raise TfdeployError(f"{what} {path}: {probe} is a file, not a folder")
        if probe and not os.access(probe, os.W_OK | os.X_OK):
            raise TfdeployError(f"{what} {path}: {probe} is not writable")
