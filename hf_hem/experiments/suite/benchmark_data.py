"""Image-classification data for the benchmark as NumPy arrays: the embedded digits, or a Hub dataset by name."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...data.columns import pick_column
from ...data.embedded import DIGIT_NAMES, load_digits_dataset


_IMAGE_COLUMNS = ("image", "img", "pixel_values")
_LABEL_COLUMNS = ("label", "labels", "fine_label")
_TEST_SPLITS = ("test", "validation", "valid", "val")


@dataclass(frozen=True)
class ArraySplits:
    """Train and test images `(N, C, H, W)` float32 in `[0, 1]` with int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _images_to_array(images, image_size: int, num_channels: int) -> np.ndarray:
    from PIL import Image

    mode = "L" if num_channels == 1 else "RGB"
    array = np.empty((len(images), num_channels, image_size, image_size), dtype=np.float32)
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        pixels = np.asarray(image.convert(mode).resize((image_size, image_size), Image.BILINEAR), dtype=np.float32)
        array[index] = (pixels[None] if num_channels == 1 else pixels.transpose(2, 0, 1)) / 255.0
    return array


def dataset_to_arrays(
    dataset,
    image_size: int,
    num_channels: int,
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a `datasets.Dataset`, resized to `image_size` and scaled to `[0, 1]`.

    Args:
        dataset (`datasets.Dataset`): an image-classification split.
        image_size (`int`): output side.
        num_channels (`int`): 1 (grayscale) or 3 (RGB).
        image_column (`str`, *optional*): defaults to the first of `image`, `img`, `pixel_values` present.
        label_column (`str`, *optional*): defaults to the first of `label`, `labels`, `fine_label` present.
        max_samples (`int`, *optional*): keep a random subset of this size (seeded) to bound the run time.
        seed (`int`, defaults to 0): seed of that subset.

    Returns:
        `tuple(np.ndarray, np.ndarray)`: `(N, C, image_size, image_size)` float32 images, `(N,)` int64 labels.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels!r}.")
    image_column = pick_column(dataset.column_names, image_column, _IMAGE_COLUMNS, "image")
    label_column = pick_column(dataset.column_names, label_column, _LABEL_COLUMNS, "label")
    if max_samples is not None and max_samples < len(dataset):
        chosen = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_samples, replace=False))
        dataset = dataset.select(chosen.tolist())
    labels = np.asarray(dataset[label_column], dtype=np.int64)
    return _images_to_array(dataset[image_column], image_size, num_channels), labels


@functools.lru_cache(maxsize=4)
def load_benchmark_data(
    dataset: str = "digits",
    image_size: int = 32,
    num_channels: int = 1,
    split_seed: int = 0,
    test_fraction: float = 0.3,
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> ArraySplits:
    """Loads the benchmark's data; cached, so the runs of one process share it (treat the arrays as read-only).

    Args:
        dataset (`str`, defaults to `"digits"`): `"digits"` for the embedded scikit-learn digits (offline), or a Hub
            dataset name for `datasets.load_dataset` (needs the network or a local cache), which must have a `train`
            split and one of `test` / `validation`.
        image_size (`int`, defaults to 32): side of the square images.
        num_channels (`int`, defaults to 1): 1 (grayscale) or 3 (RGB).
        split_seed (`int`, defaults to 0): seed of the digits train/test split and of subsampling.
        test_fraction (`float`, defaults to 0.3): share of the digits held out for testing.
        image_column, label_column (`str`, *optional*): column names of a Hub dataset.
        max_train_samples, max_test_samples (`int`, *optional*): subsample large datasets.

    Returns:
        [`ArraySplits`].
    """
    if dataset == "digits":
        splits = load_digits_dataset(
            image_size=image_size, num_channels=num_channels, seed=split_seed, test_fraction=test_fraction
        )
        train_split, test_split, class_names = splits["train"], splits["validation"], DIGIT_NAMES
    else:
        from datasets import load_dataset

        splits = load_dataset(dataset)
        test_name = next((name for name in _TEST_SPLITS if name in splits), None)
        if "train" not in splits or test_name is None:
            raise ValueError(
                f"dataset {dataset!r} needs a 'train' split and one of {_TEST_SPLITS}; has {list(splits)}."
            )
        train_split, test_split = splits["train"], splits[test_name]
        label_name = pick_column(train_split.column_names, label_column, _LABEL_COLUMNS, "label")
        feature = train_split.features[label_name]
        class_names = tuple(getattr(feature, "names", None) or map(str, sorted(set(train_split[label_name]))))
    train_images, train_labels = dataset_to_arrays(
        train_split, image_size, num_channels, image_column, label_column, max_train_samples, split_seed
    )
    test_images, test_labels = dataset_to_arrays(
        test_split, image_size, num_channels, image_column, label_column, max_test_samples, split_seed
    )
    for array in (train_images, train_labels, test_images, test_labels):
        array.setflags(write=False)  # shared through the cache: nobody may modify it in place
    return ArraySplits(train_images, train_labels, test_images, test_labels, tuple(class_names))
