"""`HEMConfig` + `HEMTrainer`: HEM / HEM+ inside the transformers `Trainer`; `hem_loss_func` for the stock one."""

from ..cards import HEMModelCardCallback
from ..losses.loss_func import HEMLossFunction, hem_loss_func
from .hem_config import HEMConfig
from .hem_trainer import HEMTrainer


__all__ = ["HEMConfig", "HEMLossFunction", "HEMModelCardCallback", "HEMTrainer", "hem_loss_func"]
