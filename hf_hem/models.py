"""Small models built from their configs (random weights, nothing downloaded): the one tiny-ResNet builder.

The image-classification pipeline (`--model_type resnet`), the benchmark suite and the tests all train a basic-block
transformers ResNet sized for CPUs; they differ only in its widths, so they all build it here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import ResNetConfig, ResNetForImageClassification


__all__ = ["tiny_resnet", "tiny_resnet_config"]


def tiny_resnet_config(
    num_labels: int,
    num_channels: int = 1,
    embedding_size: int = 16,
    hidden_sizes: Sequence[int] = (16, 32),
    depths: Sequence[int] = (1, 1),
    **config_kwargs,
) -> ResNetConfig:
    """A basic-block `ResNetConfig` (stride-4 stem, then one stage per entry of `hidden_sizes`, the first without
    downsampling).

    Args:
        num_labels (`int`): number of classes.
        num_channels (`int`, defaults to 1): input channels.
        embedding_size (`int`, defaults to 16): channels of the stem convolution.
        hidden_sizes (`Sequence[int]`, defaults to `(16, 32)`): channels of each stage.
        depths (`Sequence[int]`, defaults to `(1, 1)`): basic blocks per stage.
        config_kwargs: further `ResNetConfig` arguments (`id2label`, `label2id`, ...).

    Returns:
        [`~transformers.ResNetConfig`].
    """
    if len(hidden_sizes) != len(depths):
        raise ValueError(f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} must have the same length.")
    return ResNetConfig(
        num_channels=num_channels,
        embedding_size=embedding_size,
        hidden_sizes=list(hidden_sizes),
        depths=list(depths),
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=num_labels,
        **config_kwargs,
    )


def tiny_resnet(
    num_labels: int,
    num_channels: int = 1,
    seed: int = 0,
    embedding_size: int = 16,
    hidden_sizes: Sequence[int] = (16, 32),
    depths: Sequence[int] = (1, 1),
    **config_kwargs,
) -> ResNetForImageClassification:
    """A `ResNetForImageClassification` of [`tiny_resnet_config`], its weights initialised under `seed`.

    With the defaults it has about 25k parameters and trains on 32x32 digits at roughly 100 images per millisecond
    on two CPU cores.

    Example:

    ```python
    >>> model = tiny_resnet(num_labels=10, seed=0)
    >>> model.config.hidden_sizes
    [16, 32]
    ```
    """
    config = tiny_resnet_config(num_labels, num_channels, embedding_size, hidden_sizes, depths, **config_kwargs)
    torch.manual_seed(seed)
    return ResNetForImageClassification(config)
