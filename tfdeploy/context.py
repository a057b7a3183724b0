"""What a stage gets besides its model: strategy, data at the global batch, directories."""
import dataclasses
import os

import numpy as np

from tfdeploy import progress
from tfdeploy.strategy import is_parameter_server

from tfdeploy.traits import Traits


@dataclasses.dataclass
class Context:
    recipe: object
    strategy: object
    strategy_info: dict
    plugin: object          # the model plugin (encoding, serving inputs, rebuild)
    task: object            # raw Task (label names, sizes)
    train: object           # EncodedSplit
    validation: object      # EncodedSplit: reported on, never chooses anything
    selection: object       # EncodedSplit carved from train, or None: keep_best etc.
    run_dir: str
    # A stage's own view (the pipeline hands each stage a copy with these set):
    stage_name: str = ""
    stage_dir: str = ""
    backup_dir: str = ""    # BackupAndRestore dir; shared by all workers (see stage_runs)
    traits: Traits = Traits()  # what earlier stages did to the model entering this one
    is_chief: bool = True
    data_files: list = dataclasses.field(default_factory=list)  # what the data came from
    stage_outputs: dict = dataclasses.field(default_factory=dict)  # teachers by stage name
    encode_train: object = None  # Split -> what train_dataset reads (with augmentation)
    _all_rows: object = None

    @property
    def seed(self):
        return self.recipe.seed

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    def global_batch(self, per_replica):
        return per_replica * self.replicas

    def steps_per_epoch(self, per_replica):
        return max(1, len(self.train) // self.global_batch(per_replica))

    def train_dataset(self, per_replica, shuffle=True):
        return self.train.train_dataset(self.global_batch(per_replica), self.seed, shuffle)

    def all_training_rows(self):
        """The training and selection rows together, encoded once on first use: what a
        refit trains on after the selection split chose its length."""
        if self._all_rows is None:
            self._all_rows = self.encode_train(self.task.train_all)
        return self._all_rows

    def selection_dataset(self):
        """(inputs, labels) batches of the selection split, or None without one."""
        if self.selection is None:
            return None
        return self.selection.eval_dataset(self.recipe.evaluate.batch_size, True)[0]

    @property
    def per_step_callbacks(self):
        """Whether fit may run batch-level callbacks (a parameter_server coordinator
        refuses them: steps run asynchronously on the workers)."""
        return not is_parameter_server(self.strategy)

    def validation_args(self):
        """``fit``'s validation arguments for the selection split. Under parameter_server
        each worker reads its own copy of the dataset, so it repeats and the coordinator
        counts the steps (one pass over the split's batches in all)."""
        data = self.selection_dataset()
        if data is None or not is_parameter_server(self.strategy):
            return {"validation_data": data}
        steps = -(-len(self.selection) // self.recipe.evaluate.batch_size)
        return {"validation_data": data.repeat(), "validation_steps": steps}

    def backup_path(self):
        return self.backup_dir or self.path("backup")

    def path(self, *parts):
        """A path in this stage's directory (workers other than the chief get a temp dir)."""
        return os.path.join(self.stage_dir, *parts)

    def predict(self, model, split=None):
        """Logits for every example of ``split`` (validation by default), in dataset order."""
        split = split or self.validation
        ds, order = split.eval_dataset(self.recipe.evaluate.batch_size)
        batches = int(ds.cardinality())
        what = "evaluate keras" + (f" ({self.stage_name})" if self.stage_dir else "")
        logits = model.predict(ds, verbose=0, callbacks=[
            progress.predict_callback(what, batches if batches > 0 else 0)])
        out = np.empty_like(logits)
        out[order] = logits
        return out
