"""Causal language models: `HEMTrainer` on next-token labels, and `hem_loss_func` that cannot train the wrong target.

The gradient tests take one plain SGD step without clipping (as `test_training_step.py`) and compare the gradients
before the optimizer step with a reference written out here: per-token HEM on `logits[:, :-1]` against
`labels[:, 1:]`, every non-ignored predicted token one sample, normalised by the violating tokens of the whole batch.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import (  # noqa: E402
    DataCollatorWithFlattening,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from hf_hem import hem_loss_func  # noqa: E402
from hf_hem.trainer import HEMConfig, HEMTrainer  # noqa: E402
from hf_hem.trainer.causal_lm import (  # noqa: E402
    count_target_tokens,
    is_causal_lm,
    shift_labels,
    token_margins,
)


try:  # tests/ may or may not become a package
    from .helpers import hem_args, launch_two_processes
    from .step_recording import GradientRecorder, SequentialHEMTrainer, one_sgd_step_settings
except ImportError:
    from helpers import hem_args, launch_two_processes
    from step_recording import GradientRecorder, SequentialHEMTrainer, one_sgd_step_settings

pytestmark = pytest.mark.usefixtures("single_torch_thread")

VOCAB = 16
SEQ_LEN = 10
MARGIN = 1.0
DDP_SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_causal_lm_check.py"


def tiny_llama(seed: int = 0, vocab_size: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def zero_predicting_llama() -> LlamaForCausalLM:
    """A tiny Llama taught (plain CE, Adam) that 3 follows 3: sequences of 3s meet the margin, random ones do not."""
    model = tiny_llama()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threes = torch.full((4, SEQ_LEN), 3)
    for _ in range(25):
        optimizer.zero_grad()
        model(input_ids=threes, labels=threes).loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model


def uneven_lm_rows(seed: int = 0) -> dict[str, list]:
    """32 sequences in blocks of 8: all 3s (satisfied), mixed, all 3s, random; right padding (label -100, mask 0)
    of 0-4 tokens, and prompt-masked labels (-100) at the start of some rows."""
    rng = np.random.default_rng(seed)
    blocks = [
        np.full((8, SEQ_LEN), 3),
        np.where(rng.random((8, SEQ_LEN)) < 0.5, 3, rng.integers(4, VOCAB, (8, SEQ_LEN))),
        np.full((8, SEQ_LEN), 3),
        rng.integers(4, VOCAB, (8, SEQ_LEN)),
    ]
    input_ids = np.concatenate(blocks)
    attention = np.ones_like(input_ids)
    labels = input_ids.copy()
    for row in range(len(input_ids)):
        pad = int(rng.integers(0, 5))
        if pad:
            input_ids[row, -pad:], attention[row, -pad:], labels[row, -pad:] = 0, 0, -100
        if row % 3 == 0:
            labels[row, :3] = -100  # a prompt that takes no part in the loss
    return {"input_ids": input_ids.tolist(), "attention_mask": attention.tolist(), "labels": labels.tolist()}


def lm_dataset(rows) -> datasets.Dataset:
    return datasets.Dataset.from_dict(rows)


def reference_hem(logits: torch.Tensor, labels: torch.Tensor, margin) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token HEM on the shifted labels, written out from the method page; returns the loss and per-token losses."""
    targets = labels[:, 1:]
    valid = targets != -100
    rows, target = logits[:, :-1][valid].float(), targets[valid]
    mu = margin[target] if torch.is_tensor(margin) else torch.full_like(target, margin, dtype=rows.dtype)
    errors = (rows - rows.gather(1, target[:, None]) + mu[:, None]).clamp_min(0)
    errors = errors.scatter(1, target[:, None], 0.0)
    threshold = errors.detach().mean(dim=1, keepdim=True)
    kept = torch.where(errors >= threshold, errors, torch.zeros_like(errors))
    per_token = kept.sum(1) / (kept.detach() > 0).sum(1).clamp_min(1)
    violating = (per_token.detach() > 0).sum()
    return per_token.sum() / violating.clamp_min(1), per_token.detach()


def direct_gradients(model, rows, margin=MARGIN):
    model.train()
    model.zero_grad()
    logits = model(
        input_ids=torch.tensor(rows["input_ids"]), attention_mask=torch.tensor(rows["attention_mask"])
    ).logits
    loss, per_token = reference_hem(logits, torch.tensor(rows["labels"]), margin)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, float(loss.detach()), per_token


def one_step(tmp_path, model, rows, batch_size, accumulation, **config):
    recorder = GradientRecorder()
    args = HEMConfig(
        **one_sgd_step_settings(
            tmp_path / f"clm-{batch_size}-{accumulation}",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            **config,
        )
    )
    trainer = SequentialHEMTrainer(model=model, args=args, train_dataset=lm_dataset(rows), callbacks=[recorder])
    trainer.train()
    return recorder.gradients, trainer.state.log_history[0], trainer


def assert_same_gradients(actual, expected, what):
    for name, gradient in expected.items():
        difference = (actual[name] - gradient).norm() / gradient.norm().clamp_min(1e-12)
        assert difference < 1e-6 or (actual[name] - gradient).abs().max() < 1e-7, (
            f"{what}: {name} differs {difference}"
        )


# ---------------------------------------------------------------------------------------------- head detection


def test_causal_lm_heads_are_detected_from_transformers_facts():
    assert is_causal_lm(tiny_llama())
    assert is_causal_lm(GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=16)))
    classifier = LlamaForSequenceClassification(tiny_llama().config)
    assert not is_causal_lm(classifier)


def test_fused_head_falls_back_where_the_logits_are_transformed():
    """Gemma-2 soft-caps its logits after the head: the fused head would score other logits, so it is not used."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from hf_hem.trainer.causal_lm import fused_head_unsupported

    assert fused_head_unsupported(tiny_llama()) is None
    gemma = Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8,
        )
    )  # fmt: skip
    assert "final_logit_softcapping" in fused_head_unsupported(gemma)
    trainer = HEMTrainer(model=gemma, args=hem_args("unused", margin=1.0), train_dataset=None)
    assert trainer._loss_setup.causal_lm and not trainer._loss_setup.uses_fused_head(gemma)


def test_shift_matches_transformers_causal_lm_loss():
    """HEMTrainer's CE on a causal LM equals the model's own loss: the same shift, -100 and padding ignored."""
    rows = uneven_lm_rows()
    model = tiny_llama()
    batch = {key: torch.tensor(value) for key, value in rows.items()}
    expected = model(**batch).loss
    trainer = HEMTrainer(model=model, args=hem_args("unused", loss_name="ce"), train_dataset=lm_dataset(rows))
    model.eval()
    loss = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_packed_sequences_follow_transformers():
    """A padding-free batch (`DataCollatorWithFlattening`: one flat row, `position_ids` restart per sequence, the
    first label of each sequence -100): HEMTrainer's CE equals the model's own loss, and no token of one sequence is
    a target of the previous sequence's last position."""
    features = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10, 11]}, {"input_ids": [12, 13, 14, 15, 4]}]
    batch = DataCollatorWithFlattening(return_tensors="pt")(features)
    assert batch["input_ids"].shape[0] == 1 and (batch["position_ids"] == 0).sum() == 3
    targets = shift_labels(batch["labels"])
    # Positions 3 and 6 are the last tokens of sequences 1 and 2: their targets (the next sequence's first token) are
    # ignored, as in transformers' own loss.
    assert targets[0, 3] == -100 and targets[0, 6] == -100 and targets[0, -1] == -100
    model = tiny_llama()
    model.eval()
    inputs = {key: value for key, value in batch.items() if key in ("input_ids", "position_ids", "labels")}
    trainer = HEMTrainer(model=model, args=hem_args("unused", loss_name="ce"), train_dataset=None)
    expected = model(**inputs).loss  # after the Trainer is built: it decides how the packed rows attend
    torch.testing.assert_close(trainer.compute_loss(model, dict(inputs)), expected, rtol=1e-6, atol=0)


def test_shift_labels_key_is_used_as_given():
    model = tiny_llama()
    model.eval()
    rows = uneven_lm_rows()
    batch = {key: torch.tensor(value) for key, value in rows.items()}
    trainer = HEMTrainer(model=model, args=hem_args("unused", loss_name="ce"), train_dataset=None)
    unshifted = trainer.compute_loss(model, dict(batch))
    given = dict(batch, shift_labels=shift_labels(batch["labels"]))
    given.pop("labels")
    torch.testing.assert_close(trainer.compute_loss(model, given), unshifted, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------- gradients


def test_uneven_batch_layout():
    """The layout the gradient tests rely on: satisfied blocks, and violating counts that differ per micro-batch."""
    model = zero_predicting_llama()
    _, _, per_token = direct_gradients(model, uneven_lm_rows())
    rows = uneven_lm_rows()
    labels = torch.tensor(rows["labels"])
    blocks = (labels[:, 1:] != -100).sum(1).reshape(4, 8).sum(1).tolist()
    violating = torch.split(per_token > 0, blocks)
    counts = [int(v.sum()) for v in violating]
    assert counts[0] == 0 and counts[2] == 0 and 0 < counts[1] < blocks[1] and counts[3] > 0, counts


@pytest.mark.parametrize("fused", [True, False], ids=["fused-head", "logits"])
@pytest.mark.parametrize("loss_name", ["hem", "hem+"])
def test_causal_lm_gradients_equal_per_token_reference_with_accumulation(tmp_path, loss_name, fused):
    """One batch of 32 and 4 micro-batches of 8 (violating tokens 0, some, 0, many) give the reference gradients,
    through the fused LM head (the default) and through the full logits."""
    rows = uneven_lm_rows()
    margin = MARGIN
    if loss_name == "hem+":
        labels = torch.tensor(rows["labels"])
        counts = np.bincount(labels[:, 1:][labels[:, 1:] != -100].numpy(), minlength=VOCAB)
        present = counts > 0
        expected_margins = np.full(VOCAB, 0.0)
        expected_margins[present] = MARGIN * np.sqrt(counts.sum() / (VOCAB * counts[present]))
        expected_margins[~present] = expected_margins[present].max()
        margin = torch.tensor(expected_margins, dtype=torch.float32)
    expected, expected_loss, _ = direct_gradients(zero_predicting_llama(), rows, margin)
    for batch_size, accumulation in ((32, 1), (8, 4)):
        gradients, log, trainer = one_step(
            tmp_path,
            zero_predicting_llama(),
            rows,
            batch_size,
            accumulation,
            loss_name=loss_name,
            causal_lm_fused_head=fused,
        )
        assert trainer._loss_setup.uses_fused_head(trainer.model) is fused
        assert ("hem/accuracy" in log) is not fused  # the fused head never builds the logits
        torch.testing.assert_close(trainer.margins, torch.as_tensor(margin).expand(VOCAB).float())
        assert_same_gradients(gradients, expected, f"{loss_name} {accumulation}x{batch_size}")
        assert log["loss"] == pytest.approx(expected_loss, rel=1e-6)
        assert log["hem/margin_mean"] > 0 and 0 < log["hem/violating_fraction"] < 1


def test_causal_lm_exact_skipping_equals_no_skipping(tmp_path):
    rows = uneven_lm_rows()
    reference, reference_log, _ = one_step(tmp_path, zero_predicting_llama(), rows, 8, 4)
    gradients, log, _ = one_step(
        tmp_path, zero_predicting_llama(), rows, 8, 4, skip_zero_loss="exact", skip_backward_ratio=1e6
    )
    assert_same_gradients(gradients, reference, "exact skipping")
    assert log["loss"] == pytest.approx(reference_log["loss"], rel=1e-6)
    # Block 0 (satisfied) was not backpropagated; block 2 is satisfied too, but every sequence of block 1 has a
    # violating token, so the cost model takes the ordinary step after it (a sequence is skipped only as a whole).
    assert log["hem/skipped_fraction"] >= 8 / 32


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
def test_two_processes_with_uneven_violating_tokens(tmp_path):
    """2 processes x 2 micro-batches x 8 sequences = one process on the 32: rank 0 holds only satisfied sequences."""
    model = zero_predicting_llama()
    model.config.to_json_file(tmp_path / "config.json")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    rows = uneven_lm_rows()
    torch.save({key: torch.tensor(value) for key, value in rows.items()}, tmp_path / "data.pt")
    launch_two_processes(DDP_SCRIPT, tmp_path)
    expected, expected_loss, _ = direct_gradients(model, rows)
    saved = torch.load(tmp_path / "hem.pt")
    assert saved["world_size"] == 2
    rank0 = torch.load(tmp_path / "hem_rank0_labels.pt")
    labels = torch.tensor(rows["labels"])
    torch.testing.assert_close(rank0, torch.cat([labels[:8], labels[16:24]]))  # the satisfied blocks
    assert_same_gradients(saved["gradients"], expected, "2 processes")
    assert saved["logged_loss"] == pytest.approx(expected_loss, rel=1e-6)


# ---------------------------------------------------------------------------------------------- margins and counts


def test_token_margins_rule():
    torch.testing.assert_close(token_margins(4, 1.0), torch.ones(4))
    counts = np.array([10, 30, 0, 60])
    margins = token_margins(4, 2.0, counts, per_token=True)
    expected = 2.0 * np.sqrt(100 / (4 * counts[[0, 1, 3]]))
    torch.testing.assert_close(margins[[0, 1, 3]], torch.tensor(expected, dtype=torch.float32))
    assert margins[2] == margins.max()  # never a target: the largest finite margin
    # Balanced tokens: HEM+ equals HEM.
    torch.testing.assert_close(token_margins(4, 1.5, [5, 5, 5, 5], per_token=True), torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="causal_lm_margin"):
        token_margins(4, -1.0)


def test_count_target_tokens_counts_shifted_labels():
    batches = [{"labels": torch.tensor([[1, 2, 3, -100]])}, {"labels": torch.tensor([[3, 3, -100, -100]])}]
    counts, rows = count_target_tokens(batches, 5)
    assert rows == 2 and counts.tolist() == [0, 0, 1, 2, 0]
    with pytest.raises(ValueError, match=r"token ids in \[0, 5\)"):
        count_target_tokens([{"labels": torch.tensor([[1, 7]])}], 5)


def test_default_margin_needs_no_counting_pass(tmp_path):
    """HEM on a causal LM takes causal_lm_margin without touching the data: an iterable training set is fine."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            raise AssertionError("a fixed margin must not read the training set")

    trainer = HEMTrainer(
        model=tiny_llama(), args=hem_args(tmp_path, causal_lm_margin=0.5, max_steps=1), train_dataset=Stream()
    )
    torch.testing.assert_close(trainer.margins, torch.full((VOCAB,), 0.5))
    assert trainer.model.config.hem_margins[0] == 0.5


# ---------------------------------------------------------------------------------------------- hem_loss_func


def test_hem_loss_func_shift_labels_equals_reference():
    model = tiny_llama()
    rows = uneven_lm_rows()
    batch = {key: torch.tensor(value) for key, value in rows.items()}
    outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = hem_loss_func("hem", margin=MARGIN, shift_labels=True)(outputs, batch["labels"])
    expected, _ = reference_hem(outputs.logits, batch["labels"], MARGIN)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_hem_loss_func_refuses_unshifted_causal_lm_labels():
    model = tiny_llama()
    ids = torch.randint(0, VOCAB, (2, SEQ_LEN))
    outputs = model(input_ids=ids)
    with pytest.raises(ValueError, match="shift_labels=True"):
        hem_loss_func("hem", margin=1.0, class_dim=-1)(outputs, ids)
    # Bare (N, L, C) logits of an unknown model: one warning, then silence.
    loss_func = hem_loss_func("hem", margin=1.0, class_dim=-1)
    with pytest.warns(UserWarning, match="shift_labels=True"):
        loss_func(outputs.logits, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_func(outputs.logits, ids)
        hem_loss_func("hem", margin=1.0, class_dim=-1, shift_labels=False)(outputs.logits, ids)
    with pytest.raises(ValueError, match="class_dim"):
        hem_loss_func("hem", margin=1.0, class_dim=1, shift_labels=True)


# ---------------------------------------------------------------------------------------------- scripts/run_clm.py


def test_run_clm_trains_on_text_files_and_writes_a_hem_card(tmp_path):
    import json

    from hf_hem.pipelines.causal_lm import load_embedded_lm_dataset

    try:
        from .helpers import REPO_ROOT, script_main
    except ImportError:
        from helpers import REPO_ROOT, script_main

    data = load_embedded_lm_dataset(num_train=96, num_validation=32)
    (tmp_path / "train.txt").write_text("\n".join(data["train"]["text"]) + "\n\n")  # an empty line is dropped
    (tmp_path / "valid.txt").write_text("\n".join(data["validation"]["text"]))
    output = tmp_path / "out"
    main = script_main(REPO_ROOT / "scripts" / "run_clm.py")
    status = main(
        [
            "--train_file", str(tmp_path / "train.txt"), "--validation_file", str(tmp_path / "valid.txt"),
            "--output_dir", str(output), "--hidden_size", "16", "--num_layers", "1", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "32", "--learning_rate", "1e-2", "--use_cpu", "true",
            "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
        ]
    )  # fmt: skip
    assert status == 0
    results = json.loads((output / "all_results.json").read_text())
    assert results["train_samples"] == 96 and 0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1
    card = (output / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "AutoModelForCausalLM" in card and "hem-loss" in card
    config = json.loads((output / "config.json").read_text())
    assert config["hem_loss"] == "hem" and set(config["hem_margins"]) == {1.0}
