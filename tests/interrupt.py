"""A task wrapper for resume tests: raises at the start of one epoch, as a crash would."""
from cnnlab.training.task import Task


class StopAtEpoch(Task):
    """Wraps a task and raises at the start of one epoch: an interruption, as a crash would be."""

    def __init__(self, task, epoch):
        self.task, self.stop_epoch = task, epoch

    def train_batches(self, epoch):
        return self.task.train_batches(epoch)

    def steps_per_epoch(self):
        return self.task.steps_per_epoch()

    def training_step(self, model, batch):
        return self.task.training_step(model, batch)

    def evaluate(self, model):
        return self.task.evaluate(model)

    def on_epoch_start(self, model, epoch):
        if epoch == self.stop_epoch:
            raise KeyboardInterrupt
