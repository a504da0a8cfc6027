"""Tests of hf_hem.data: embedded datasets, NumPy/PIL transforms, segmentation loading and the pixel histogram."""

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_hem.data import (
    ADE20K_HUB_ID,
    DIGIT_NAMES,
    UndecodableImageError,
    ade20k_id2label,
    bounded_map,
    build_classification_transforms,
    build_segmentation_transforms,
    collate_fn,
    decode_mask,
    digits_segmentation_id2label,
    load_digits_dataset,
    load_digits_segmentation_dataset,
    load_segmentation_dataset,
    mask_histogram,
    random_resized_crop_box,
    read_id2label,
    reduce_labels,
    resolve_image_settings,
)
from hf_hem.data import segmentation as segmentation_module


try:  # tests/ may or may not become a package
    from .helpers import ade_examples, ade_features, png_bytes, reduce_ade_labels, write_ade_parquet
except ImportError:
    from helpers import ade_examples, ade_features, png_bytes, reduce_ade_labels, write_ade_parquet


datasets.disable_progress_bars()

ADE_FEATURES = ade_features()
# 12x16 ADE-style examples with two ignored (255) pixels at the end of every mask.
ade_like_examples = functools.partial(ade_examples, size=(12, 16), ignored_pixels=2)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def digit_scenes():
    return load_digits_segmentation_dataset(num_images=60, image_size=32, seed=3)


# ----------------------------------------------------------------------------------------------------------------------
# Embedded datasets


def test_digits_dataset_schema_and_stratified_split(digits):
    assert set(digits) == {"train", "validation"}
    assert digits["train"].num_rows + digits["validation"].num_rows == 1797
    assert digits["validation"].num_rows == 360
    label_feature = digits["train"].features["label"]
    assert isinstance(label_feature, datasets.ClassLabel) and label_feature.names == list(DIGIT_NAMES)
    example = digits["train"][0]
    assert example["image"].mode == "RGB" and example["image"].size == (32, 32)
    train_counts = np.bincount(list(digits["train"]["label"]), minlength=10)
    validation_counts = np.bincount(list(digits["validation"]["label"]), minlength=10)
    share = validation_counts / (train_counts + validation_counts)
    assert np.all(np.abs(share - 0.2) < 0.01), share  # stratified: every class keeps its 20 %


def test_digits_dataset_is_deterministic_and_seeded(digits):
    again = load_digits_dataset()
    other_seed = load_digits_dataset(seed=1)
    assert list(again["train"]["label"]) == list(digits["train"]["label"])
    assert np.array_equal(np.asarray(again["train"][5]["image"]), np.asarray(digits["train"][5]["image"]))
    assert list(other_seed["train"]["label"]) != list(digits["train"]["label"])


def test_digits_dataset_greyscale_and_bad_arguments():
    grey = load_digits_dataset(image_size=16, num_channels=1)
    assert grey["validation"][0]["image"].mode == "L" and grey["validation"][0]["image"].size == (16, 16)
    with pytest.raises(ValueError, match="num_channels"):
        load_digits_dataset(num_channels=2)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits_dataset(test_fraction=1.5)
    with pytest.raises(ValueError, match="image_size"):
        load_digits_dataset(image_size=4)


def test_digits_segmentation_schema_and_masks(digit_scenes):
    assert {name: split.num_rows for name, split in digit_scenes.items()} == {"train": 48, "validation": 12}
    assert digit_scenes["train"].features == ADE_FEATURES
    for example in digit_scenes["train"].select(range(10)):
        image, mask = np.asarray(example["image"]), np.asarray(example["annotation"])
        assert example["image"].mode == "RGB" and example["annotation"].mode == "L"
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert mask.max() <= 10 and (mask > 0).any()
        # The mask marks the digits: digit pixels are painted much brighter than the background.
        brightness = image.mean(axis=2)
        assert brightness[mask > 0].mean() > brightness[mask == 0].mean() + 60
        assert 1 <= example["scene_category"] <= 3


def test_digits_segmentation_is_deterministic(digit_scenes):
    again = load_digits_segmentation_dataset(num_images=60, image_size=32, seed=3)
    other = load_digits_segmentation_dataset(num_images=60, image_size=32, seed=4)
    for index in (0, 17):
        assert np.array_equal(
            np.asarray(again["train"][index]["annotation"]), np.asarray(digit_scenes["train"][index]["annotation"])
        )
        assert np.array_equal(
            np.asarray(again["train"][index]["image"]), np.asarray(digit_scenes["train"][index]["image"])
        )
    assert not np.array_equal(np.asarray(other["train"][0]["image"]), np.asarray(digit_scenes["train"][0]["image"]))
    assert digits_segmentation_id2label() == {d: str(d) for d in range(10)}
    assert digits_segmentation_id2label(reduce_labels=False)[0] == "background"
    assert digits_segmentation_id2label(reduce_labels=False)[10] == "9"


# ----------------------------------------------------------------------------------------------------------------------
# Label reduction and checks


def test_reduce_labels_pixel_by_pixel():
    mask = np.array([[0, 1, 2, 150], [254, 255, 0, 7]], dtype=np.uint8)
    reduced = reduce_labels(mask)
    np.testing.assert_array_equal(reduced, [[255, 0, 1, 149], [253, 255, 255, 6]])
    assert reduced.dtype == np.uint8 and mask[0, 0] == 0  # input untouched
    np.testing.assert_array_equal(reduce_labels(PIL.Image.fromarray(mask)), reduced)
    # An ignore index that does not fit the dtype widens it instead of wrapping around.
    widened = reduce_labels(mask, ignore_index=1000)
    assert widened[0, 0] == 1000 and widened[1, 1] == 254


def test_decode_mask_keeps_palette_indices_and_rejects_colour():
    indices = np.array([[0, 3], [7, 200]], dtype=np.uint8)
    palette_mask = PIL.Image.fromarray(indices, mode=None).convert("L").convert("P")
    palette_mask.putpalette([255 - (i % 256) for i in range(768)])  # grey levels differ from the indices
    np.testing.assert_array_equal(decode_mask(palette_mask), np.asarray(palette_mask))
    sixteen_bit = PIL.Image.fromarray(np.array([[0, 300], [1000, 5]], dtype=np.uint16))
    np.testing.assert_array_equal(decode_mask(sixteen_bit), [[0, 300], [1000, 5]])
    with pytest.raises(ValueError, match="mode 'RGB'"):
        decode_mask(PIL.Image.new("RGB", (2, 2)), "example 4")


# ----------------------------------------------------------------------------------------------------------------------
# Classification transforms


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    low=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_resized_crop_box_stays_inside(width, height, low, seed):
    left, top, crop_width, crop_height = random_resized_crop_box(
        width, height, (low, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed)
    )
    assert 0 <= left and 0 <= top and crop_width >= 1 and crop_height >= 1
    assert left + crop_width <= width and top + crop_height <= height


def test_random_resized_crop_box_area_and_fallback():
    rng = np.random.default_rng(0)
    areas = [np.prod(random_resized_crop_box(200, 200, (0.25, 0.5), (1.0, 1.0), rng)[2:]) / 200**2 for _ in range(200)]
    assert 0.24 <= min(areas) and max(areas) <= 0.51
    # A 100x1 strip cannot hold a near-square crop: the fallback is the widest centred crop with ratio <= 2.
    assert random_resized_crop_box(100, 1, (0.5, 1.0), (1.0, 2.0), rng) == (49, 0, 2, 1)


@pytest.mark.parametrize(
    "processor_name, kwargs",
    [
        ("ViTImageProcessorPil", {"size": {"height": 32, "width": 32}}),
        ("ConvNextImageProcessorPil", {"size": {"shortest_edge": 32}}),  # crop_pct path
        ("ConvNextImageProcessorPil", {"size": {"shortest_edge": 384}}),  # warp path
    ],
)
def test_eval_classification_transform_matches_image_processor(processor_name, kwargs):
    transformers = pytest.importorskip("transformers")
    processor = getattr(transformers, processor_name)(**kwargs)
    rng = np.random.default_rng(0)
    images = [
        PIL.Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for shape in [(50, 70, 3), (71, 40, 3)]
    ]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    ours = build_classification_transforms(processor, train=False)({"image": images, "label": [3, 4]})
    assert ours["labels"] == [3, 4]
    np.testing.assert_allclose(np.stack(ours["pixel_values"]), expected, atol=1e-5)


def test_resolve_image_settings_from_values_and_errors():
    square = resolve_image_settings(size=24, image_mean=[0.5], image_std=[0.25])
    assert (square.height, square.width, square.mode) == (24, 24, "L")
    assert (resolve_image_settings(size=(10, 20)).height, resolve_image_settings(size=(10, 20)).width) == (10, 20)
    with pytest.raises(ValueError, match="size"):
        resolve_image_settings()
    with pytest.raises(ValueError, match="size must be"):
        resolve_image_settings(size={"longest_edge": 3})
    with pytest.raises(ValueError, match="image_std"):
        resolve_image_settings(size=8, image_mean=[0.5] * 3, image_std=[0.0, 1.0, 1.0])


def test_train_classification_transform_flip_parameter_and_seed():
    # A left-right asymmetric image; a full-image crop isolates the effect of the flip.
    array = np.zeros((16, 16, 3), dtype=np.uint8)
    array[:, :5] = 255
    image = PIL.Image.fromarray(array)
    common = {"size": 16, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)}
    reference = build_classification_transforms(train=False, size=16)({"image": [image]})["pixel_values"][0]
    mirrored = reference[:, :, ::-1]

    no_flip = build_classification_transforms(train=True, horizontal_flip=False, seed=0, **common)
    outputs = no_flip({"image": [image] * 20})["pixel_values"]
    assert all(np.allclose(output, reference) for output in outputs)

    flip = build_classification_transforms(train=True, horizontal_flip=True, seed=0, **common)
    outputs = flip({"image": [image] * 40})["pixel_values"]
    flipped = sum(np.allclose(output, mirrored) for output in outputs)
    assert 5 < flipped < 35 and flipped + sum(np.allclose(o, reference) for o in outputs) == 40

    crop = {"size": 8, "crop_scale": (0.2, 0.6)}
    first = build_classification_transforms(train=True, seed=1, **crop)({"image": [image] * 4})["pixel_values"]
    second = build_classification_transforms(train=True, seed=1, **crop)({"image": [image] * 4})["pixel_values"]
    third = build_classification_transforms(train=True, seed=2, **crop)({"image": [image] * 4})["pixel_values"]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, c) for a, c in zip(first, third))


def test_classification_set_transform_and_collate(digits):
    train = digits["train"].select(range(8))
    train.set_transform(build_classification_transforms(size=24, train=True, horizontal_flip=False, seed=0))
    batch = collate_fn([train[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 24, 24) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == list(digits["train"]["label"][:4])
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    loader = torch.utils.data.DataLoader(train, batch_size=4, collate_fn=collate_fn)
    assert [b["pixel_values"].shape[0] for b in loader] == [4, 4]
    with pytest.raises(ValueError, match="no image column 'img'"):
        build_classification_transforms(size=8, train=False, image_column="img")({"image": []})
    with pytest.raises(ValueError, match="empty batch"):
        collate_fn([])


def test_augmentation_differs_between_dataloader_workers():
    class Constant(torch.utils.data.Dataset):
        def __init__(self, transform):
            self.transform = transform
            self.image = PIL.Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))

        def __len__(self):
            return 4

        def __getitem__(self, index):
            return self.transform({"image": [self.image]})["pixel_values"][0]

    transform = build_classification_transforms(size=8, train=True, crop_scale=(0.05, 0.2), seed=0)
    loader = torch.utils.data.DataLoader(Constant(transform), batch_size=2, num_workers=2)
    worker_batches = list(loader)  # worker 0 makes the first batch, worker 1 the second
    assert not torch.equal(worker_batches[0], worker_batches[1])


# ----------------------------------------------------------------------------------------------------------------------
# Segmentation transforms


def test_eval_segmentation_transform_matches_segformer_processor():
    transformers = pytest.importorskip("transformers")
    processor = transformers.SegformerImageProcessorPil(size={"height": 24, "width": 32}, do_reduce_labels=True)
    images, masks = ade_like_examples(3, size=(37, 53))
    pil_images, pil_masks = [PIL.Image.fromarray(i) for i in images], [PIL.Image.fromarray(m) for m in masks]
    expected = processor(images=pil_images, segmentation_maps=pil_masks, return_tensors="np")
    transform = build_segmentation_transforms(processor, train=False, num_labels=150)
    assert transform.do_reduce_labels  # taken from the processor
    ours = transform({"image": pil_images, "annotation": pil_masks})
    np.testing.assert_allclose(np.stack(ours["pixel_values"]), expected["pixel_values"], atol=1e-5)
    np.testing.assert_array_equal(np.stack(ours["labels"]), expected["labels"])


def test_train_segmentation_transform_keeps_image_and_mask_aligned():
    # Four quadrants, each with its own grey level and class. After scaling, cropping and flipping, every pixel away
    # from a border (its 5x5 neighbourhood has one label) must still show its class's grey level; a shift or a flip
    # of the mask alone would break this for a large share of them.
    levels = np.array([40, 100, 160, 220], dtype=np.uint8)
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[:20, 20:], classes[20:, :20], classes[20:, 20:] = 1, 2, 3
    image = PIL.Image.fromarray(np.repeat(levels[classes][..., None], 3, axis=2))
    transform = build_segmentation_transforms(
        size=24, image_mean=[0.0] * 3, image_std=[1.0] * 3, train=True, num_labels=4, scale_range=(0.6, 1.5), seed=0
    )
    output = transform({"image": [image] * 12, "annotation": [PIL.Image.fromarray(classes)] * 12})
    interior_pixels = 0
    for pixels, labels in zip(output["pixel_values"], output["labels"]):
        assert pixels.shape == (3, 24, 24) and labels.shape == (24, 24) and labels.dtype == np.int64
        grey = np.rint(pixels[0] * 255)
        padded = np.pad(labels, 2, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
        interior = (windows == labels[..., None, None]).all(axis=(-1, -2)) & (labels != 255)
        interior_pixels += interior.sum()
        np.testing.assert_allclose(grey[interior], levels[labels[interior]], atol=2)
    assert interior_pixels > 12 * 24 * 24 * 0.3


def test_train_segmentation_transform_pads_mask_with_ignore_index():
    image = PIL.Image.fromarray(np.full((10, 10, 3), 200, dtype=np.uint8))
    mask = PIL.Image.fromarray(np.ones((10, 10), dtype=np.uint8))
    # scale 0.5 of a 32-pixel crop: the pair becomes 16x16 and must be padded to 32x32.
    transform = build_segmentation_transforms(
        size=32, image_mean=[0.0] * 3, image_std=[1.0] * 3, train=True, scale_range=(0.5, 0.5), seed=0
    )
    output = transform({"image": [image], "annotation": [mask]})
    pixels, labels = output["pixel_values"][0], output["labels"][0]
    assert (labels == 1).sum() == 16 * 16 and (labels == 255).sum() == 32 * 32 - 16 * 16
    np.testing.assert_allclose(pixels[:, labels == 255], 0.0)  # image padded with 0
    np.testing.assert_allclose(pixels[:, labels == 1], 200 / 255, atol=1e-6)


def test_segmentation_transform_is_reproducible_with_seed(digit_scenes):
    batch = digit_scenes["train"][:4]

    def run(seed):
        return build_segmentation_transforms(size=24, train=True, seed=seed, do_reduce_labels=True)(batch)["labels"]

    assert all(np.array_equal(a, b) for a, b in zip(run(5), run(5)))
    assert not all(np.array_equal(a, b) for a, b in zip(run(5), run(6)))


def test_segmentation_transform_rejects_mismatched_sizes_naming_the_example():
    batch = {
        "image": [PIL.Image.new("RGB", (8, 8)), PIL.Image.new("RGB", (8, 6))],
        "annotation": [PIL.Image.new("L", (8, 8)), PIL.Image.new("L", (6, 8))],
        "example_index": [41, 42],
    }
    transform = build_segmentation_transforms(size=8, train=False)
    with pytest.raises(ValueError, match=r"example 42.*mask size 6x8 .* image size 8x6"):
        transform(batch)


def test_segmentation_transform_rejects_out_of_range_labels():
    mask = np.zeros((6, 6), dtype=np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 12, 200, 255
    batch = {"image": [PIL.Image.new("RGB", (6, 6))], "annotation": [PIL.Image.fromarray(mask)]}
    with pytest.raises(ValueError, match=r"example 0 of the batch.*\[12, 200\]"):
        build_segmentation_transforms(size=6, train=False, num_labels=10)(batch)
    # The same mask is valid once num_labels covers it; 255 is the ignore index either way.
    build_segmentation_transforms(size=6, train=False, num_labels=201)(batch)
    with pytest.raises(ValueError, match="collides"):
        build_segmentation_transforms(size=6, train=False, num_labels=300)


def test_segmentation_transform_names_or_skips_undecodable_files():
    good_image = {"bytes": png_bytes(np.zeros((6, 6, 3), dtype=np.uint8)), "path": "good.jpg"}
    good_mask = {"bytes": png_bytes(np.ones((6, 6), dtype=np.uint8)), "path": "good.png"}
    broken = {"bytes": b"\x89PNG\r\n\x1a\n-- truncated", "path": "ADE_train_00000007.png"}
    batch = {"image": [good_image, good_image, good_image], "annotation": [good_mask, broken, good_mask]}
    with pytest.raises(UndecodableImageError, match="ADE_train_00000007.png"):
        build_segmentation_transforms(size=6, train=False)(batch)
    skipping = build_segmentation_transforms(size=6, train=False, skip_bad=True)
    output = skipping(batch)
    assert len(output["pixel_values"]) == len(output["labels"]) == 2 and skipping.num_skipped == 1


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def test_ade20k_id2label_ships_with_the_package(tmp_path):
    id2label = ade20k_id2label()
    assert len(id2label) == 150 and len(set(id2label.values())) == 150
    assert (id2label[0], id2label[1], id2label[2], id2label[12], id2label[149]) == (
        "wall",
        "building",
        "sky",
        "person",
        "flag",
    )
    raw = ade20k_id2label(reduce_labels=False)
    assert len(raw) == 151 and raw[0] == "background" and raw[1] == "wall" and raw[150] == "flag"
    path = tmp_path / "id2label.json"
    path.write_text(json.dumps({"1": "b", "0": "a"}))
    assert read_id2label(path) == {0: "a", 1: "b"}
    path.write_text(json.dumps({"0": "a", "2": "c"}))
    with pytest.raises(ValueError, match="without gaps"):
        read_id2label(path)


def test_local_parquet_in_ade_schema_reduce_labels_pixel_by_pixel(tmp_path):
    images, masks = ade_like_examples(6)
    parquet = write_ade_parquet(tmp_path / "train-00000-of-00001.parquet", images, masks)
    loaded = load_segmentation_dataset(data_files=parquet, train_val_split=None, cache_dir=str(tmp_path / "cache"))
    train = loaded["train"]
    assert list(loaded) == ["train"]
    assert set(train.column_names) == {"image", "annotation", "scene_category", "example_index"}
    assert list(train["example_index"]) == list(range(6))
    np.testing.assert_array_equal(np.asarray(train[2]["annotation"]), masks[2])  # lossless round trip

    # Evaluation at the native size: the labels are exactly the reduced masks.
    train.set_transform(
        build_segmentation_transforms(size=(12, 16), train=False, do_reduce_labels=True, num_labels=150)
    )
    for index in range(6):
        labels = train[index]["labels"]
        np.testing.assert_array_equal(labels, reduce_ade_labels(masks[index]))
        assert labels[0, 0] == 255 and labels[0, 1] == 0 and labels[0, 2] == 149 and labels[-1, -1] == 255
    # The pixel histogram of the same data agrees with a brute-force count.
    counts, num_images = mask_histogram(train, 150, reduce_labels=True, progress=False)
    brute = np.bincount(np.concatenate([reduce_ade_labels(m).ravel() for m in masks]), minlength=256)[:150]
    assert num_images == 6
    np.testing.assert_array_equal(counts, brute)


def test_local_parquet_splits_and_train_val_split(tmp_path):
    images, masks = ade_like_examples(10)
    files = {
        "train": write_ade_parquet(tmp_path / "a.parquet", images[:7], masks[:7]),
        "val": write_ade_parquet(tmp_path / "b.parquet", images[7:], masks[7:]),
    }
    loaded = load_segmentation_dataset(data_files=files, cache_dir=str(tmp_path / "cache"))
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 7, "validation": 3}
    held_out = load_segmentation_dataset(data_files=files["train"], train_val_split=0.3, cache_dir=str(tmp_path / "c"))
    assert {name: split.num_rows for name, split in held_out.items()} == {"train": 4, "validation": 3}
    # example_index still names the row of the source file after the split.
    assert sorted([*held_out["train"]["example_index"], *held_out["validation"]["example_index"]]) == list(range(7))


def test_plain_parquet_with_other_column_names_is_normalised(tmp_path):
    # Parquet written by another tool: no datasets metadata, images as struct<bytes, path>, transformers-example names.
    images, masks = ade_like_examples(3)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "pixel_values": pa.array([{"bytes": png_bytes(i), "path": None} for i in images], type=struct),
            "label": pa.array([{"bytes": png_bytes(m), "path": None} for m in masks], type=struct),
        }
    )
    pq.write_table(table, tmp_path / "data.parquet")
    loaded = load_segmentation_dataset(data_files=str(tmp_path / "data.parquet"), train_val_split=None, decode=False)
    train = loaded["train"]
    assert isinstance(train.features["image"], datasets.Image) and not train.features["annotation"].decode
    assert set(train[0]["annotation"]) == {"bytes", "path"}  # left encoded: the transforms decode it
    output = build_segmentation_transforms(size=(12, 16), train=False)(train[:3])
    np.testing.assert_array_equal(output["labels"][1], masks[1])


def test_hub_names_route_through_the_same_normalisation(tmp_path, monkeypatch):
    images, masks = ade_like_examples(4)
    parquet = write_ade_parquet(tmp_path / "train-00000.parquet", images, masks)
    real_load_dataset = datasets.load_dataset
    calls = []

    def fake_load_dataset(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        return real_load_dataset("parquet", data_files={"train": parquet}, cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(segmentation_module.datasets, "load_dataset", fake_load_dataset)
    hub = load_segmentation_dataset("scene_parse_150", train_val_split=None)
    path, args, kwargs = calls[-1]
    assert path == ADE20K_HUB_ID == "zhoubolei/scene_parse_150"
    assert kwargs["revision"] == "refs/convert/parquet" and kwargs["data_dir"] == "scene_parsing"
    assert set(hub["train"].column_names) == {"image", "annotation", "scene_category", "example_index"}
    np.testing.assert_array_equal(np.asarray(hub["train"][3]["annotation"]), masks[3])

    load_segmentation_dataset("segments/sidewalk-semantic", "default", revision="v1", train_val_split=None)
    path, args, kwargs = calls[-1]
    assert (path, args, kwargs["revision"]) == ("segments/sidewalk-semantic", ("default",), "v1")
    assert "data_dir" not in kwargs


def test_image_and_mask_folders(tmp_path):
    images, masks = ade_like_examples(5)
    for index, (image, mask) in enumerate(zip(images, masks)):
        split = "training" if index < 3 else "validation"
        (tmp_path / "images" / split).mkdir(parents=True, exist_ok=True)
        (tmp_path / "annotations" / split).mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(tmp_path / "images" / split / f"ADE_{index}.png")
        PIL.Image.fromarray(mask).save(tmp_path / "annotations" / split / f"ADE_{index}.png")
    loaded = load_segmentation_dataset(train_dir=tmp_path)
    assert {name: split.num_rows for name, split in loaded.items()} == {"train": 3, "validation": 2}
    np.testing.assert_array_equal(np.asarray(loaded["validation"][1]["annotation"]), masks[4])
    (tmp_path / "annotations" / "training" / "ADE_0.png").unlink()
    with pytest.raises(ValueError, match="have no mask"):
        load_segmentation_dataset(train_dir=tmp_path)


def test_load_segmentation_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="exactly one data source"):
        load_segmentation_dataset()
    with pytest.raises(ValueError, match="exactly one data source"):
        load_segmentation_dataset("scene_parse_150", data_files="x.parquet")
    with pytest.raises(ValueError, match="not a .parquet file"):
        load_segmentation_dataset(data_files="masks.csv")
    images, masks = ade_like_examples(2)
    parquet = write_ade_parquet(tmp_path / "t.parquet", images, masks)
    with pytest.raises(ValueError, match="no mask column 'segmentation'"):
        load_segmentation_dataset(data_files=parquet, mask_column="segmentation", cache_dir=str(tmp_path / "c"))


# ----------------------------------------------------------------------------------------------------------------------
# Pixel histogram


def test_bounded_map_keeps_order_and_reads_at_most_max_in_flight_ahead():
    pulled = []

    def items():
        for index in range(20):
            pulled.append(index)
            yield index

    with ThreadPoolExecutor(2) as pool:
        results = bounded_map(pool, lambda value: value * value, items(), max_in_flight=3)
        assert next(results) == 0 and len(pulled) == 3
        assert list(results) == [index * index for index in range(1, 20)]
    assert segmentation_module._bounded_map is bounded_map  # the old name, until every caller has moved


def test_pixel_histogram_matches_brute_force_and_ignores_set_transform(digit_scenes):
    train = digit_scenes["train"]
    masks = [np.asarray(m) for m in train["annotation"]]
    brute = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=11)
    train.set_transform(lambda batch: (_ for _ in ()).throw(AssertionError("transform must not run")))
    counts, num_images = mask_histogram(train, 10, reduce_labels=True, progress=False, num_threads=2)
    train.reset_format()
    assert num_images == 48 and counts.dtype == np.int64 and counts.shape == (10,)
    np.testing.assert_array_equal(counts, brute[1:11])
    raw_counts, _ = mask_histogram(train, 11, ignore_index=None, progress=False)
    np.testing.assert_array_equal(raw_counts, brute)
    # Streaming and plain iterables give the same counts.
    streamed, streamed_images = mask_histogram(train.to_iterable_dataset(), 10, reduce_labels=True, progress=False)
    np.testing.assert_array_equal(streamed, counts)
    listed, _ = mask_histogram(masks, 10, reduce_labels=True, progress=False)
    np.testing.assert_array_equal(listed, counts)
    assert streamed_images == 48
    subset, subset_images = mask_histogram(train.select([3, 5]), 10, reduce_labels=True, progress=False)
    np.testing.assert_array_equal(
        subset, np.bincount(np.concatenate([masks[3].ravel(), masks[5].ravel()]), minlength=11)[1:]
    )
    assert subset_images == 2


def test_pixel_histogram_wide_masks_and_bad_values():
    sixteen_bit = [np.array([[0, 300], [299, 5]], dtype=np.uint16), np.array([[300, 300]], dtype=np.uint16)]
    counts, _ = mask_histogram(sixteen_bit, 301, ignore_index=None, progress=False)
    assert counts[300] == 3 and counts[299] == 1 and counts.sum() == 6
    masks = [
        np.zeros((2, 2), dtype=np.uint8),
        np.ones((2, 2), dtype=np.uint8),
        np.array([[3, 250], [255, 2]], dtype=np.uint8),
    ]
    with pytest.raises(ValueError, match=r"example 2 has values \[3, 250\]"):
        mask_histogram(masks, 3, progress=False)
    with pytest.raises(ValueError, match="ignore_index 3 is also"):
        mask_histogram(masks, 3, ignore_index=3, reduce_labels=True, progress=False)
    with pytest.raises(ValueError, match="DatasetDict"):
        mask_histogram(datasets.DatasetDict({"train": datasets.Dataset.from_dict({"annotation": [1]})}), 3)


def test_pixel_histogram_names_or_skips_undecodable_masks(caplog):
    good = {"bytes": png_bytes(np.full((4, 4), 2, dtype=np.uint8)), "path": "fine.png"}
    broken = {"bytes": b"not an image", "path": "ADE_val_00000002.png"}
    with pytest.raises(UndecodableImageError, match="ADE_val_00000002.png"):
        mask_histogram([good, broken, good], 5, progress=False)
    counts, num_images = mask_histogram([good, broken, good], 5, progress=False, skip_bad=True)
    assert num_images == 2 and counts[2] == 32
    assert "skipped 1 undecodable" in caplog.text
