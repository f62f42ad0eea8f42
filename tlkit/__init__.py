"""tlkit: the helper package behind the practical-CNN teaching workbench."""
from . import data, env, models, optim, plots
from .config import ParameterError, setup
from .record import record
from .train import Learner, NonFiniteLossError

__version__ = "0.1.0"
__all__ = ["Learner", "NonFiniteLossError", "ParameterError", "data", "env", "models", "optim", "plots",
           "record", "setup"]
