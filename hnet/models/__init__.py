from hnet.models.hnet import HNet, HNetForCausalLM, ModelOutput
from hnet.models.weights import load_checkpoint

__all__ = ["HNet", "HNetForCausalLM", "ModelOutput", "load_checkpoint"]
