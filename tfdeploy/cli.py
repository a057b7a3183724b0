"""Console script ``tfdeploy``: ``tfdeploy RECIPE ...`` runs a recipe (as ``python -m
tfdeploy.run``); ``tfdeploy serve ...`` serves (as ``python -m tfdeploy.serve``). Only the
chosen command's module is imported: each defines its own absl flags."""
import sys


def entry():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.argv = [f"{sys.argv[0]} serve"] + sys.argv[2:]
        from tfdeploy.serve.__main__ import entry as serve
        return serve()
    from tfdeploy.run import entry as run
    return run()
