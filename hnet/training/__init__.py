from hnet.training.loop import TrainingError, TrainResult, evaluate, load_run_config, train
from hnet.training.model import model_for_run

__all__ = ["TrainingError", "TrainResult", "evaluate", "load_run_config", "model_for_run", "train"]
