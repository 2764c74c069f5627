from hnet.training.loop import TrainingError, TrainResult, build_model, evaluate, load_run_config, train, train_from_cli

__all__ = ["TrainingError", "TrainResult", "build_model", "evaluate", "load_run_config", "train", "train_from_cli"]
