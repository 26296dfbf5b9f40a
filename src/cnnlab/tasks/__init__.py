"""Tasks that plug into `cnnlab.engine.Engine`: each says what differs (batches, loss, evaluation)."""
from cnnlab.tasks.classification import ClassificationConfig, ClassificationTask, count_macs, score

__all__ = ["ClassificationConfig", "ClassificationTask", "count_macs", "score"]
