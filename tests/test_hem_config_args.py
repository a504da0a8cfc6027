"""`HEMConfig` in other people's argument parsers: no field of its own may share a name with the argument dataclasses
of transformers' example scripts or of TRL, since `HfArgumentParser` puts every dataclass into one namespace and
stops at a name declared twice (`argparse.ArgumentError: conflicting option strings`)."""

import dataclasses
import os
import warnings

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import HfArgumentParser, TrainingArguments  # noqa: E402

import hf_hem  # noqa: E402
from hf_hem.trainer import HEMConfig  # noqa: E402


# The field names the argument dataclasses (ModelArguments, DataTrainingArguments, ...) of transformers' official
# PyTorch example scripts declare. The first groups come from the scripts read for issue 19 (run_ner.py,
# run_image_classification.py and run_glue.py of transformers 5.8 read in full); the others are the lists of the
# issue and of its brief.
EXAMPLE_SCRIPT_FIELDS = {
    "image-classification/run_image_classification.py": (
        "dataset_name dataset_config_name train_dir validation_dir train_val_split max_train_samples max_eval_samples "
        "image_column_name label_column_name model_name_or_path model_type config_name cache_dir model_revision "
        "image_processor_name token trust_remote_code ignore_mismatched_sizes"
    ),
    "token-classification/run_ner.py": (
        "task_name dataset_name dataset_config_name train_file validation_file test_file text_column_name "
        "label_column_name overwrite_cache preprocessing_num_workers max_seq_length pad_to_max_length "
        "max_train_samples max_eval_samples max_predict_samples label_all_tokens return_entity_level_metrics "
        "model_name_or_path config_name tokenizer_name cache_dir model_revision token trust_remote_code "
        "ignore_mismatched_sizes"
    ),
    "text-classification/run_glue.py": (
        "task_name dataset_name dataset_config_name max_seq_length overwrite_cache pad_to_max_length "
        "max_train_samples max_eval_samples max_predict_samples train_file validation_file test_file "
        "model_name_or_path config_name tokenizer_name cache_dir use_fast_tokenizer model_revision token "
        "trust_remote_code ignore_mismatched_sizes"
    ),
    "semantic-segmentation/run_semantic_segmentation.py (issue list)": (
        "dataset_name dataset_config_name train_val_split max_train_samples max_eval_samples do_reduce_labels "
        "reduce_labels model_name_or_path config_name image_processor_name cache_dir model_revision token "
        "trust_remote_code"
    ),
    "language-modeling/run_clm.py, run_mlm.py": (
        "model_name_or_path model_type config_overrides config_name tokenizer_name cache_dir use_fast_tokenizer "
        "model_revision token trust_remote_code torch_dtype dataset_name dataset_config_name train_file "
        "validation_file max_train_samples max_eval_samples streaming block_size overwrite_cache "
        "validation_split_percentage preprocessing_num_workers keep_linebreaks mlm_probability line_by_line "
        "pad_to_max_length"
    ),
    "multiple-choice/run_swag.py": (
        "model_name_or_path config_name tokenizer_name cache_dir use_fast_tokenizer model_revision token "
        "trust_remote_code train_file validation_file overwrite_cache preprocessing_num_workers max_seq_length "
        "pad_to_max_length max_train_samples max_eval_samples"
    ),
    "audio-classification/run_audio_classification.py": (
        "dataset_name dataset_config_name train_file eval_file train_split_name eval_split_name audio_column_name "
        "label_column_name max_train_samples max_eval_samples max_length_seconds model_name_or_path config_name "
        "cache_dir model_revision feature_extractor_name freeze_feature_encoder attention_mask token "
        "trust_remote_code ignore_mismatched_sizes"
    ),
    "question-answering/run_qa.py": (
        "model_name_or_path config_name tokenizer_name cache_dir model_revision token trust_remote_code "
        "dataset_name dataset_config_name train_file validation_file test_file overwrite_cache "
        "preprocessing_num_workers max_seq_length pad_to_max_length max_train_samples max_eval_samples "
        "max_predict_samples version_2_with_negative null_score_diff_threshold doc_stride n_best_size "
        "max_answer_length question_column_name context_column_name answer_column_name"
    ),
    "issue 19's list (all of the above scripts)": (
        "dataset_name dataset_config_name train_dir validation_dir train_val_split max_train_samples "
        "max_eval_samples max_predict_samples image_column_name label_column_name text_column_name task_name "
        "train_file validation_file test_file max_seq_length overwrite_cache pad_to_max_length "
        "preprocessing_num_workers label_all_tokens return_entity_level_metrics do_reduce_labels reduce_labels "
        "model_name_or_path model_type config_name tokenizer_name image_processor_name cache_dir model_revision "
        "token trust_remote_code use_fast_tokenizer ignore_mismatched_sizes"
    ),
}
ALL_EXAMPLE_FIELDS = sorted({name for names in EXAMPLE_SCRIPT_FIELDS.values() for name in names.split()})

# A command line with HEM's flags next to the scripts' own (values that are not the defaults, to see them arrive).
HEM_FLAGS = ["--loss_name", "hem", "--margin", "1.5", "--class_counts_column", "fine_label", "--use_cpu", "true"]


def arguments_class(class_name: str, names) -> type:
    """A dataclass declaring `names` as optional string fields, standing in for a script's argument dataclass."""
    return dataclasses.make_dataclass(
        class_name, [(name, str | None, dataclasses.field(default=None)) for name in names]
    )


def hem_own_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(HEMConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}


@pytest.mark.parametrize("script", sorted(EXAMPLE_SCRIPT_FIELDS))
def test_hem_config_parses_beside_each_example_scripts_arguments(script, tmp_path):
    names = EXAMPLE_SCRIPT_FIELDS[script].split()
    script_arguments = arguments_class("ScriptArguments", names)
    # As the scripts build it; before the rename this raised for every script declaring label_column_name.
    parser = HfArgumentParser((script_arguments, HEMConfig))
    argv = [f"--{name}={name}-value" for name in names]
    script_args, config = parser.parse_args_into_dataclasses(args=[*argv, *HEM_FLAGS, "--output_dir", str(tmp_path)])
    assert {name: getattr(script_args, name) for name in names} == {name: f"{name}-value" for name in names}
    assert (config.loss_name, config.margin, config.class_counts_column) == ("hem", 1.5, "fine_label")


def test_hem_config_parses_beside_every_example_field_at_once(tmp_path):
    parser = HfArgumentParser((arguments_class("AllExampleArguments", ALL_EXAMPLE_FIELDS), HEMConfig))
    script_args, config = parser.parse_args_into_dataclasses(
        args=["--label_column_name", "ner_tags", *HEM_FLAGS, "--output_dir", str(tmp_path)]
    )
    assert script_args.label_column_name == "ner_tags" and config.class_counts_column == "fine_label"
    assert not hem_own_fields() & set(ALL_EXAMPLE_FIELDS)


def test_hem_config_parses_beside_trl_script_and_model_arguments(tmp_path):
    trl = pytest.importorskip("trl")
    parser = HfArgumentParser((trl.ScriptArguments, trl.ModelConfig, HEMConfig))
    script_args, model_args, config = parser.parse_args_into_dataclasses(
        args=[
            "--dataset_name", "local/data", "--model_name_or_path", "local/model", "--use_peft", "true",
            *HEM_FLAGS, "--output_dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert (script_args.dataset_name, model_args.model_name_or_path, model_args.use_peft) == (
        "local/data",
        "local/model",
        True,
    )
    assert config.class_counts_column == "fine_label"


def test_no_hem_field_is_a_field_of_any_trl_config():
    """TRL's trainer configs subclass TrainingArguments as HEMConfig does; a config combining both (or code reading
    one as the other) must not meet a HEM field under a TRL meaning."""
    trl = pytest.importorskip("trl")
    common = {f.name for f in dataclasses.fields(TrainingArguments)}
    checked = []
    for name in ("ScriptArguments", "ModelConfig", "SFTConfig", "DPOConfig", "GRPOConfig", "RewardConfig"):
        config_class = getattr(trl, name, None)
        if config_class is None:
            continue
        checked.append(name)
        shared = hem_own_fields() & ({f.name for f in dataclasses.fields(config_class)} - common)
        assert not shared, f"HEMConfig fields {sorted(shared)} are also fields of trl.{name}"
    assert "ScriptArguments" in checked and "SFTConfig" in checked


# ---- the former name ----


def test_former_label_column_name_still_works_in_python_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="label_column_name was renamed class_counts_column"):
        config = HEMConfig(output_dir=str(tmp_path), use_cpu=True, label_column_name="fine_label")
    assert config.class_counts_column == "fine_label"
    with pytest.warns(FutureWarning, match="renamed class_counts_column"):
        assert config.label_column_name == "fine_label"
    with pytest.warns(FutureWarning, match="renamed class_counts_column"):
        config.label_column_name = "coarse_label"
    assert config.class_counts_column == "coarse_label"
    # Not a field: it is neither a flag nor in the saved arguments, so it cannot collide in a parser.
    assert "label_column_name" not in {f.name for f in dataclasses.fields(HEMConfig)}
    assert "label_column_name" not in config.to_dict()


def test_former_and_new_name_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="label_column_name='a' and class_counts_column='b' were both given"):
        HEMConfig(output_dir=str(tmp_path), use_cpu=True, label_column_name="a", class_counts_column="b")


def test_new_name_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        config = HEMConfig(output_dir=str(tmp_path), use_cpu=True, class_counts_column="fine_label")
        assert dataclasses.replace(config, margin=1.0).class_counts_column == "fine_label"


# ---- dir(hf_hem) ----


def test_dir_lists_the_public_names_lazy_ones_included():
    listed = set(dir(hf_hem))
    assert {"HEMConfig", "HEMTrainer", "hem_loss_func", "count_labels", "generate_model_card"} <= listed
    assert set(hf_hem.__all__) <= listed
    for name in hf_hem.__all__:  # every listed name also resolves
        assert getattr(hf_hem, name) is not None, name


# ---- scripts/check_transformers_examples.py: the README's two-name change ----


def _check_examples_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "check_transformers_examples.py"
    spec = importlib.util.spec_from_file_location("check_transformers_examples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_name_change_renames_exactly_the_two_names_and_fails_loudly_otherwise():
    module = _check_examples_module()
    source = (
        "from transformers import (\n    HfArgumentParser,\n    Trainer,\n    TrainingArguments,\n)\n"
        "from transformers.utils import check_min_version\n"
        "parser = HfArgumentParser((ModelArguments, TrainingArguments))\n"
        "# Initialize our Trainer\ntrainer = Trainer(model=model)\n"
    )
    changed = module.two_name_change(source, "run_x.py")
    assert changed == (
        "from transformers import (\n    HfArgumentParser,\n)\n"
        "from hf_hem import HEMConfig, HEMTrainer\nfrom transformers.utils import check_min_version\n"
        "parser = HfArgumentParser((ModelArguments, HEMConfig))\n"
        "# Initialize our Trainer\ntrainer = HEMTrainer(model=model)\n"
    )
    with pytest.raises(ValueError, match=r"run_y.py: .*found 0 import lines"):
        module.two_name_change("trainer = Trainer(model=model)\n", "run_y.py")
