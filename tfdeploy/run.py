"""`python -m tfdeploy.run RECIPE [--set PATH=VALUE ...]`: run a recipe end to end.

Bad input (recipe, override, data, checkpoint) prints one clear message and exits 2.
"""
import os
import sys
import traceback
import warnings

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("set", [], "Override a recipe value: PATH=VALUE, e.g. "
                                     "stages.1.final_sparsity=0.8 (repeatable).")
flags.DEFINE_string("output_dir", "", "Root for run directories (default: the recipe's "
                                      "output.dir).")
flags.DEFINE_enum("strategy", "", ["", "auto", "cpu", "one_device", "mirrored", "tpu",
                                   "multi_worker", "parameter_server"],
                  "Override distribution.strategy.")
flags.DEFINE_list("stages", [], "Run only these stages (by name), in recipe order.")
flags.DEFINE_string("from", "", "Reuse finished outputs of the stages before this one and "
                                "run from it on.")
flags.DEFINE_bool("resume", False, "Continue the latest run of this recipe: finished stages "
                                   "whose config is unchanged are not rerun.")
flags.DEFINE_bool("dry_run", False, "Validate, print the resolved recipe and a preflight "
                                    "(model, data, layers each stage touches); train nothing.")
flags.DEFINE_integer("seed", None, "Override the recipe's seed.")
flags.DEFINE_float("progress_every", 30, "When the output is not a terminal, a progress "
                                        "line (step/total, rate, ETA) every this many "
                                        "seconds; 0 = no progress output (quiet).")
flags.DEFINE_enum("progress", "auto", ["auto", "bar", "lines"], "auto: a live bar on a "
                                                                "terminal, lines otherwise.")
flags.DEFINE_bool("serve", False, "When the run has published a version, serve it as the "
                                  "recipe's serve: section says (tfdeploy.serve) until "
                                  "SIGTERM or Ctrl-C.")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("expected exactly one recipe file: "
                             "python -m tfdeploy.run RECIPE [--set PATH=VALUE ...]")
    if FLAGS.verbosity > 0:  # let TF's C++ logging through too
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    elif not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's Python INFO lines are noise by default
        warnings.filterwarnings("ignore", message=".*HDF5 file.*")
    from tfdeploy import progress

    progress.configure(FLAGS.progress_every, FLAGS.progress)
    overrides = list(FLAGS.set)
    if FLAGS.seed is not None:
        overrides.append(f"seed={FLAGS.seed}")
    return execute(argv[1], overrides, verbose=FLAGS.verbosity > 0,
                   output_dir=FLAGS.output_dir, strategy=FLAGS.strategy,
                   only=tuple(FLAGS.stages), start_from=FLAGS["from"].value,
                   resume=FLAGS.resume, dry_run=FLAGS.dry_run, serve=FLAGS.serve)


def execute(recipe_path, overrides=(), verbose=False, **options):
    """Run a recipe as the CLI does; the exit code. Bad input prints one message (no
    traceback unless ``verbose``): what the CLI and the recipe fuzzer both call."""
    from tfdeploy.errors import TfdeployError

    try:
        _main(recipe_path, overrides, options)
        return 0
    except TfdeployError as e:
        if verbose:  # the cause's traceback, for whoever debugs it
            traceback.print_exception(e)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


def _main(recipe_path, overrides, options):
    serve = options.pop("serve", False)
    import tfdeploy  # noqa: F401  (pins Keras 2 before TensorFlow loads)
    from tfdeploy.recipe.load import load_tree
    from tfdeploy.recipe.schema import Recipe
    from tfdeploy.recipe.validate import validate

    tree, locations = load_tree(recipe_path, overrides)
    recipe = validate(Recipe, tree, locations)

    import tf_keras as keras

    from tfdeploy import pipeline, strategy

    if strategy.serve_cluster_task(recipe.distribution, options.get("strategy")):
        return  # a parameter_server worker or ps task, stopped from outside

    keras.utils.set_random_seed(recipe.seed)
    summary = pipeline.run(recipe, pipeline.Options(**options))
    if serve and summary is not None:
        from tfdeploy.serve import server

        server.run(server.settings_for_recipe(recipe))


def entry():
    """Console script ``tfdeploy``."""
    app.run(main)


if __name__ == "__main__":
    entry()
