from hnet.training.loop import TrainingError, TrainResult, build_model, evaluate, load_run_config, train

__all__ = ["TrainingError", "TrainResult", "build_model", "evaluate", "load_run_config", "train"]
