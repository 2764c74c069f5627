from hnet.training.loop import TrainResult, build_model, evaluate, load_run_config, train, train_from_cli
from hnet.training.optim import build_optimizer, build_schedule
from hnet.training.step import Objective, TrainingError, forward_loss, train_step

__all__ = ["TrainingError", "TrainResult", "build_model", "evaluate", "load_run_config", "train", "train_from_cli",
           "build_optimizer", "build_schedule", "Objective", "forward_loss", "train_step"]
