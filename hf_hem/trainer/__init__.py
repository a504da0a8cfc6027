"""`HEMConfig` + `HEMTrainer`: HEM / HEM+ inside the transformers `Trainer`; `hem_loss_func` for the stock one."""

from .hem_config import HEMConfig
from .hem_trainer import HEMLossFunction, HEMModelCardCallback, HEMTrainer, hem_loss_func


__all__ = ["HEMConfig", "HEMLossFunction", "HEMModelCardCallback", "HEMTrainer", "hem_loss_func"]
