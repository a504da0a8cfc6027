"""Losses: HEM/HEM+, the margin-loss relatives, and the paper's baselines. Plain PyTorch, no transformers."""

from .baselines import (
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LogitAdjustedLoss,
    LogitNormLoss,
    cross_entropy_loss,
    dice_loss,
    focal_loss,
    logit_adjusted_loss,
    logitnorm_loss,
)
from .fused_linear import FusedLinearHEMLoss, fused_linear_hem_loss
from .hem import HEMLoss, MMLoss, MMMazLoss, MMThresLoss, hem_loss, mm_loss, mm_maz_loss, mm_thres_loss
from .registry import LOSS_NAMES, get_loss
from .settings import LossSettings, build_loss


__all__ = [
    "LOSS_NAMES",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "FusedLinearHEMLoss",
    "HEMLoss",
    "LogitAdjustedLoss",
    "LogitNormLoss",
    "LossSettings",
    "MMLoss",
    "MMMazLoss",
    "MMThresLoss",
    "build_loss",
    "cross_entropy_loss",
    "dice_loss",
    "focal_loss",
    "fused_linear_hem_loss",
    "get_loss",
    "hem_loss",
    "logit_adjusted_loss",
    "logitnorm_loss",
    "mm_loss",
    "mm_maz_loss",
    "mm_thres_loss",
]
