"""Builders the test files share: tiny models, in-memory data, loss inputs, and what launched processes need.

Plain functions, so that they take arguments and can be imported by the scripts the tests launch (put `TESTS_DIR`
on their `PYTHONPATH`, see [`with_repo_on_pythonpath`]); the fixtures are in `tests/conftest.py`. The pipeline
scripts in `scripts/` are run the same way by every test file: [`run_pipeline`] in this process,
[`run_pipeline_process`] in a new one (or two, under `accelerate launch`), both on the tiny settings of
[`TINY_PIPELINE_FLAGS`]. Nothing here
downloads: models are built from configs with random weights. transformers and datasets are imported by the
builders that need them, so that the loss tests do not pay for importing them.

Import it as the test files import `hub_server`:

```python
try:  # tests/ may or may not become a package
    from .helpers import tiny_vit
except ImportError:
    from helpers import tiny_vit
```
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_hem import hem_loss, mm_loss, mm_maz_loss, mm_thres_loss
from hf_hem.losses import kernels


TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
#: Two CPU processes under `accelerate launch --config_file`.
ACCELERATE_CPU_CONFIG = REPO_ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


# ------------------------------------------------------------------------------------------------ processes


def with_repo_on_pythonpath(env: dict, *, tests_dir: bool = False) -> dict:
    """`env` with the repository (and, with `tests_dir`, `tests/` for `import helpers`) first on `PYTHONPATH`.

    A launched process must import this checkout's `hf_hem`, whatever is installed and wherever it starts.
    """
    env = dict(env)
    first = [str(REPO_ROOT), *([str(TESTS_DIR)] if tests_dir else [])]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*first, env.get("PYTHONPATH")]))
    return env


def offline_env(**extra) -> dict:
    """The environment of a launched script: offline Hub and datasets, one OpenMP thread, this checkout first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return with_repo_on_pythonpath(env)


def free_port() -> int:
    """A free TCP port on the loopback interface, for a launch's `--main_process_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script, workdir) -> None:
    """Runs `script workdir` on two real CPU ranks (gloo) under `accelerate launch`, offline, with `tests/` on the
    `PYTHONPATH` (the scripts in `tests/scripts/` import `step_recording`)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(script), str(workdir),
    ]  # fmt: skip
    env = with_repo_on_pythonpath(offline_env(CUDA_VISIBLE_DEVICES=""), tests_dir=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def script_main(script: Path) -> Callable:
    """`main` of a script in `scripts/`, loaded afresh from its file (scripts are not importable modules)."""
    spec = importlib.util.spec_from_file_location(f"{script.stem}_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# ------------------------------------------------------------------------------------------------ pipeline scripts

# The text and token scripts train a BERT of one layer of width 16 on 32 embedded sentences, with its own tokenizer.
_TINY_TEXT_FLAGS = (
    "--max_train_samples", "32",
    "--max_eval_samples", "16",
    "--num_train_epochs", "1",
    "--per_device_train_batch_size", "16",
    "--per_device_eval_batch_size", "16",
    "--max_seq_length", "32",
    "--tokenizer_vocab_size", "300",
    "--config_overrides", "hidden_size=16,num_hidden_layers=1,intermediate_size=32",
    "--logging_steps", "1",
    "--disable_tqdm", "true",
    "--report_to", "none",
    "--eval_strategy", "no",
    "--save_strategy", "no",
)  # fmt: skip

#: The flags of a tiny run of each script `scripts/run_<task>.py`, on its embedded data unless a test adds others.
#: They check that the pieces fit (data, model, trainer, metrics, cards, Hub), not what the model learns.
TINY_PIPELINE_FLAGS = {
    # 64 training digits, one epoch of 4 steps, 40 validation digits.
    "image_classification": (
        "--max_train_samples", "64",
        "--max_eval_samples", "40",
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "64",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
    ),
    # The embedded digit scenes at 32 px: 40 images (32 train, 8 validation), one quick epoch, no evaluation per epoch.
    "semantic_segmentation": (
        "--num_embedded_images", "40",
        "--image_size", "32",
        "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "16",
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--disable_tqdm", "true",
        "--log_level", "error",
    ),
    "text_classification": _TINY_TEXT_FLAGS,
    "token_classification": _TINY_TEXT_FLAGS,
}  # fmt: skip


def pipeline_script(task: str) -> Path:
    """The script `scripts/run_<task>.py` of a pipeline of [`TINY_PIPELINE_FLAGS`]."""
    if task not in TINY_PIPELINE_FLAGS:
        raise ValueError(f"no pipeline script for task {task!r}: expected one of {sorted(TINY_PIPELINE_FLAGS)}")
    return REPO_ROOT / "scripts" / f"run_{task}.py"


def pipeline_argv(task: str, output_dir, *flags: str) -> list[str]:
    """The tiny flags of `task`, then `flags` (a later flag overrides an earlier one), then `--output_dir`."""
    return [*TINY_PIPELINE_FLAGS[task], *flags, "--output_dir", str(output_dir)]


def run_pipeline(task: str, output_dir, *flags: str) -> Path:
    """Runs `main` of `scripts/run_<task>.py` in this process, offline, on the tiny flags + `flags`, and checks that it
    returns 0; returns `output_dir` as a `Path`. An exception of the script (bad input) propagates."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        exit_code = script_main(pipeline_script(task))(pipeline_argv(task, output_dir, *flags))
    assert exit_code == 0, f"run_{task}.py returned {exit_code}"
    return Path(output_dir)


def run_pipeline_process(
    task: str,
    output_dir,
    *flags: str,
    env: dict | None = None,
    two_processes: bool = False,
    timeout: int | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Runs `scripts/run_<task>.py` on the tiny flags + `flags` in a new Python process, or on two CPU processes under
    `accelerate launch` with `two_processes`, in `env` ([`offline_env`] by default); returns the finished process.

    With `check` its exit status must be 0 (the end of its stderr explains a failure). `timeout` defaults to 300 s,
    400 s for two processes.
    """
    launcher = (
        ["-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CPU_CONFIG)] if two_processes else []
    )
    command = [sys.executable, *launcher, str(pipeline_script(task)), *pipeline_argv(task, output_dir, *flags)]
    timeout = timeout or (400 if two_processes else 300)
    completed = subprocess.run(
        command, env=offline_env() if env is None else env, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


# ------------------------------------------------------------------------------------------------ losses

#: The margin family by the short names the tests parametrise over.
MARGIN_LOSSES = {"hem": hem_loss, "mm": mm_loss, "mm+maz": mm_maz_loss, "mm+thres": mm_thres_loss}


def method_page_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The three-sample batch of the method page (`docs/method.md`): `(logits (3, 4), labels (3,))`, new tensors."""
    logits = torch.tensor([[2.0, 1.9, 2.3, 0.0], [3, 0, 0, 0], [1.0, 1.1, 0.5, 0.8]])
    return logits, torch.tensor([0, 0, 1])


def gradcheck_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 `(6, 5, 3)` logits that require grad, labels with one ignored (-100) position, and 5 per-class margins.

    Small enough for `torch.autograd.gradcheck`, which differentiates every logit numerically.
    """
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (6, 3), generator=generator)
    labels[0, 0] = -100
    return logits, labels, torch.linspace(0.1, 0.9, 5, dtype=torch.float64)


requires_triton = pytest.mark.skipif(
    not kernels.triton_available(), reason="triton is not installed (pip install triton to run these tests)"
)
# Read when the test module is collected, after tests/conftest.py has set the variable for the session.
requires_triton_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton interpreter is off (tests/conftest.py turns it on without a GPU)",
)
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ------------------------------------------------------------------------------------------------ tiny models
# Each builder seeds torch first, so the same arguments give the same weights; dropout is off so that two forward
# passes of one batch agree. Keyword arguments override or extend the config.

NUM_CLASSES = 3


def tiny_vit(num_labels: int = NUM_CLASSES, seed: int = 0, **config):
    """A `ViTForImageClassification` for 8x8 images (4x4 patches, one layer of width 16)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    settings = {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "image_size": 8,
        "patch_size": 4,
        "num_labels": num_labels,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    return ViTForImageClassification(ViTConfig(**{**settings, **config}))


def tiny_resnet(num_labels: int = NUM_CLASSES, seed: int = 0, **config):
    """A `ResNetForImageClassification` with two basic stages of width 8 and 16 (the library's one tiny-ResNet
    builder, [`hf_hem.models.tiny_resnet`], at test size)."""
    from hf_hem.models import tiny_resnet as build_tiny_resnet

    settings = {"num_channels": 3, "embedding_size": 8, "hidden_sizes": (8, 16), "depths": (1, 1)}
    return build_tiny_resnet(num_labels, seed=seed, **{**settings, **config})


def tiny_segformer(num_labels: int = 4, seed: int = 0, **config):
    """A `SegformerForSemanticSegmentation` of two stages (widths 8 and 16, strides 2): logits at half the input size."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    settings = {
        "num_channels": 3,
        "num_encoder_blocks": 2,
        "depths": [1, 1],
        "sr_ratios": [2, 1],
        "hidden_sizes": [8, 16],
        "patch_sizes": [3, 3],
        "strides": [2, 2],
        "num_attention_heads": [1, 2],
        "mlp_ratios": [2, 2],
        "decoder_hidden_size": 16,
        "num_labels": num_labels,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": 0.0,
        "drop_path_rate": 0.0,
    }
    return SegformerForSemanticSegmentation(SegformerConfig(**{**settings, **config}))


def tiny_bert(head="SequenceClassification", num_labels: int | None = None, seed: int = 0, **config):
    """A BERT of one layer of width 16 (2 heads, vocabulary 64, 32 positions) with the head `head`.

    `head` is a model class (`BertForTokenClassification`) or its name without `BertFor` (`"TokenClassification"`,
    `"SequenceClassification"`, `"MultipleChoice"`, `"MaskedLM"`, ...). `num_labels` defaults to BERT's own (2), or
    to the length of an `id2label` in `config`.
    """
    import transformers

    if isinstance(head, str):
        model_class = getattr(transformers, f"BertFor{head}", None)
        if model_class is None:
            raise ValueError(
                f"no BERT head named {head!r}: expected the name of a `BertFor...` class without `BertFor`"
            )
    else:
        model_class = head
    torch.manual_seed(seed)
    settings = {
        "vocab_size": 64,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        **({} if num_labels is None else {"num_labels": num_labels}),
    }
    return model_class(transformers.BertConfig(**{**settings, **config}))


def hem_args(output_dir, **overrides):
    """`HEMConfig` for a test: CPU, no reporting integrations, no progress bars; `overrides` on top."""
    from hf_hem.trainer import HEMConfig

    return HEMConfig(
        **{"output_dir": str(output_dir), "use_cpu": True, "report_to": "none", "disable_tqdm": True, **overrides}
    )


# ------------------------------------------------------------------------------------------------ in-memory data


def image_dataset(num_samples=32, size=8, seed=0, num_classes=NUM_CLASSES, class_label=True):
    """A `datasets.Dataset` of `(3, size, size)` float32 images whose class brightens one channel: learnable in a few
    steps. Columns `pixel_values` and `label` (a `ClassLabel`, or plain int64 without `class_label`)."""
    import datasets

    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % num_classes
    rng.shuffle(labels)
    pixels = rng.normal(scale=0.5, size=(num_samples, 3, size, size)).astype(np.float32)
    pixels[np.arange(num_samples), labels % 3] += 1.5
    features = datasets.Features(
        {
            "pixel_values": datasets.Array3D((3, size, size), "float32"),
            "label": datasets.ClassLabel(num_classes=num_classes) if class_label else datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict({"pixel_values": pixels, "label": labels}, features=features)


def segmentation_dataset(num_images=6, size=16, num_classes=4, seed=0, bad_value=None):
    """`(dataset, masks)`: a torch-formatted dataset of images and int64 masks whose top 3 rows are ignored (255),
    class frequencies 55/25/15/5 %, and the masks as one array. `bad_value` is written into mask 1."""
    import datasets

    rng = np.random.default_rng(seed)
    masks = rng.choice(num_classes, size=(num_images, size, size), p=[0.55, 0.25, 0.15, 0.05]).astype(np.int64)
    masks[:, :3, :] = 255
    if bad_value is not None:
        masks[1, 5, 5] = bad_value
    pixels = rng.normal(size=(num_images, 3, size, size)).astype(np.float32)
    pixels[:, 0] += masks.clip(max=num_classes) * 0.5
    return datasets.Dataset.from_dict({"pixel_values": pixels, "labels": masks}).with_format("torch"), masks


def png_bytes(array: np.ndarray) -> bytes:
    """`array` (`(H, W)` or `(H, W, 3)` uint8) encoded as a PNG file."""
    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def ade_features():
    """The `datasets.Features` of ADE20K on the Hub: `image`, `annotation` (images) and `scene_category`."""
    import datasets

    return datasets.Features(
        {"image": datasets.Image(), "annotation": datasets.Image(), "scene_category": datasets.Value("int64")}
    )


def ade_examples(
    count: int, size: int | tuple[int, int] = 32, seed: int = 0, num_values: int = 151, ignored_pixels: int = 1
):
    """`(images, masks)`: random RGB images and raw ADE-style masks (0 background, 1.. classes) as uint8 arrays.

    Every mask holds the edge values `0, 1, num_values - 1` in its first row, and the last `ignored_pixels` of
    its last row are 255.
    `size` is one side or `(height, width)`.
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(count)]
    masks = []
    for _ in range(count):
        mask = rng.integers(0, num_values, size=(height, width)).astype(np.uint8)
        mask[0, :3] = (0, 1, num_values - 1)
        mask[-1, -ignored_pixels:] = 255
        masks.append(mask)
    return images, masks


def write_ade_parquet(path, images, masks, *, scene_category: int = 7, image_bytes: dict | None = None) -> str:
    """A parquet file in the ADE20K schema of the Hub's conversion, as `datasets` writes it; returns its path.

    Images are named `ADE_00000.jpg`, ... and masks `ADE_00000.png`, ...; `image_bytes` replaces the encoded bytes of
    some images (`{index: bytes}`), to plant files that do not decode.
    """
    import datasets

    encoded_images = [png_bytes(image) for image in images]
    for index, data in (image_bytes or {}).items():
        encoded_images[index] = data
    rows = {
        "image": [{"bytes": data, "path": f"ADE_{i:05d}.jpg"} for i, data in enumerate(encoded_images)],
        "annotation": [{"bytes": png_bytes(mask), "path": f"ADE_{i:05d}.png"} for i, mask in enumerate(masks)],
        "scene_category": [scene_category] * len(images),
    }
    datasets.Dataset.from_dict(rows, features=ade_features()).to_parquet(str(path))
    return str(path)


def reduce_ade_labels(mask: np.ndarray) -> np.ndarray:
    """ADE20K's label reduction written out value by value (0 and 255 -> 255, v -> v - 1), as int64.

    Independent of `hf_hem.data.reduce_labels` on purpose: the tests check that one against this.
    """
    expected = np.empty(mask.shape, dtype=np.int64)
    for (row, col), value in np.ndenumerate(mask):
        expected[row, col] = 255 if value in (0, 255) else value - 1
    return expected
