from hnet.training.loop import TrainResult, evaluate, load_run_config, train
from hnet.training.model import model_for_run
from hnet.training.optim import build_optimizer, build_schedule
from hnet.training.step import Objective, TrainingError, forward_loss, train_step

__all__ = ["TrainingError", "TrainResult", "evaluate", "load_run_config", "model_for_run", "train",
           "build_optimizer", "build_schedule", "Objective", "forward_loss", "train_step"]
