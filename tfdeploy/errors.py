"""User-facing errors: printed as one clear message, exit code 2, no traceback."""


class TfdeployError(Exception):
    """Bad input from the user (recipe, override, file, data). Shown without traceback."""

    exit_code = 2


class RecipeError(TfdeployError):
    """One or more problems in a recipe, each naming its key path and YAML location."""

    def __init__(self, problems):
        # problems: list of (path, message, location or None)
        self.problems = list(problems)
        super().__init__(self.format())

    def format(self):
        lines = []
        for path, message, location in self.problems:
            where = f" ({location})" if location else ""
            lines.append(f"{path or '<recipe>'}: {message}{where}")
        return "\n".join(lines)


class DataError(TfdeployError):
    """A data file is missing or malformed; the message names the file and row."""


class CheckpointError(TfdeployError):
    """A model checkpoint is missing, incomplete or inconsistent."""


class StageError(TfdeployError):
    """A stage cannot run with its configuration on this model."""


class GateError(TfdeployError):
    """An accuracy or parity gate failed after export (exit 3: the run itself worked)."""

    exit_code = 3
