"""Tasks that plug into `cnnlab.training.engine.Engine`: each says what differs (batches, loss, evaluation).
Tasks train and score; they never draw (figures and reports read the files they write)."""
from cnnlab.tasks.classification import ClassificationConfig, ClassificationTask, count_macs, save_embeddings, score

__all__ = ["ClassificationConfig", "ClassificationTask", "count_macs", "save_embeddings", "score"]
