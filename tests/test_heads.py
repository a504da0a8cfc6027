"""`hf_hem.heads`: the table of heads, and finding a model's head the way transformers lists it.

Every model is a tiny one built from its config class (no download). The facts of the table are checked where they
are used: the loss set-up of [`HEMTrainer`] (class dimension, shifted labels, what the classes are) and the card.
"""

from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaPreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2ForSequenceClassification,
)
from transformers.loss.loss_utils import LOSS_MAPPING
from transformers.models.auto import modeling_auto

from hf_hem.cards import card_task_for_model, generate_model_card
from hf_hem.heads import FALLBACK_HEAD, HEADS, find_head, head_named
from hf_hem.trainer.loss_setup import LossSetup


try:  # tests/ may or may not become a package
    from .helpers import hem_args, tiny_bert, tiny_segformer, tiny_vit
except ImportError:
    from helpers import hem_args, tiny_bert, tiny_segformer, tiny_vit


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def tiny_llama(cls=LlamaForCausalLM):
    config = LlamaConfig(
        vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=4,
    )  # fmt: skip
    return cls(config)


def tiny_wav2vec2_classifier():
    config = Wav2Vec2Config(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8, conv_dim=(8, 8),
        conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=1,
        classifier_proj_size=8, num_labels=3,
    )  # fmt: skip
    return Wav2Vec2ForSequenceClassification(config)


MODELS = {
    "image-classification": tiny_vit,
    "semantic-segmentation": tiny_segformer,
    "token-classification": lambda: tiny_bert(BertForTokenClassification, num_labels=5),
    "sequence-classification": lambda: tiny_bert(BertForSequenceClassification, num_labels=3),
    "multiple-choice": lambda: tiny_bert(BertForMultipleChoice),
    "causal-lm": tiny_llama,
    "audio-classification": tiny_wav2vec2_classifier,
}


# ------------------------------------------------------------------------------------------------ the table


def test_every_head_of_the_table_has_a_tiny_model_here():
    assert set(MODELS) == {head.name for head in HEADS}


def test_the_table_names_what_transformers_has():
    """A mapping, loss type or auto class renamed upstream would silently turn a head into 'unknown'."""
    for head in HEADS:
        assert getattr(modeling_auto, f"MODEL_FOR_{head.mapping}_MAPPING_NAMES"), head.name
        assert head.loss_type is None or head.loss_type in LOSS_MAPPING, head.name
        assert hasattr(transformers, head.auto_model_class), head.name
    assert len({head.name for head in HEADS}) == len({head.pipeline_tag for head in HEADS}) == len(HEADS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_head_is_found_from_a_model_built_from_its_config(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    assert find_head(model) is head_named(name)
    assert card_task_for_model(model) == head_named(name).pipeline_tag


def test_audio_classifiers_named_for_sequence_classification_are_audio_heads():
    assert find_head(tiny_wav2vec2_classifier()).name == "audio-classification"
    assert find_head(tiny_bert(BertForSequenceClassification)).name == "sequence-classification"


def test_a_subclass_and_a_saved_architecture_keep_their_head():
    class MyTagger(BertForTokenClassification):  # a user's subclass: its own name says nothing
        pass

    assert find_head(tiny_bert(MyTagger, num_labels=3)).name == "token-classification"
    saved = SimpleNamespace(config=SimpleNamespace(architectures=["BertForMultipleChoice"]))
    assert find_head(saved).name == "multiple-choice"


def test_a_model_transformers_does_not_list_is_found_by_its_loss_type():
    class TinyDecoderForCausalLM(LlamaPreTrainedModel):  # in no auto mapping; transformers gives it loss_type
        def __init__(self, config):
            super().__init__(config)
            self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size)
            self.post_init()

    model = tiny_llama(TinyDecoderForCausalLM)
    assert type(model).__name__ not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    assert find_head(model).name == "causal-lm"


def test_an_encoder_decoder_model_is_no_causal_lm():
    saved = SimpleNamespace(config=SimpleNamespace(architectures=["LlamaForCausalLM"], is_encoder_decoder=True))
    assert find_head(saved) is None
    assert find_head(SimpleNamespace(config=SimpleNamespace(architectures=["LlamaForCausalLM"]))).name == "causal-lm"


def test_class_name_endings_are_the_last_resort_for_plain_modules():
    class TinyForSemanticSegmentation(torch.nn.Module):
        pass

    class TinyForSequenceClassification(torch.nn.Module):  # text or audio: the ending does not say
        pass

    assert find_head(TinyForSemanticSegmentation()).name == "semantic-segmentation"
    assert find_head(TinyForSequenceClassification()) is None


def test_peft_wrapped_models_have_their_base_models_head():
    peft = pytest.importorskip("peft")
    tagger = peft.get_peft_model(
        tiny_bert(BertForTokenClassification, num_labels=3),
        peft.LoraConfig(r=2, target_modules=["query", "value"], task_type="TOKEN_CLS"),
    )
    assert type(tagger).__name__ == "PeftModelForTokenClassification"
    assert find_head(tagger).name == "token-classification"
    decoder = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert find_head(decoder).name == "causal-lm"


def test_unknown_heads_and_names():
    assert find_head(tiny_bert(BertForMaskedLM)) is None
    assert find_head(None) is None
    assert card_task_for_model(tiny_bert(BertForMaskedLM)) is None
    assert head_named("image-segmentation") is head_named("semantic-segmentation")
    assert head_named("text-generation") is head_named("causal-lm")
    with pytest.raises(ValueError, match=r"no head named 'fill-mask'; expected one of .*token-classification"):
        head_named("fill-mask")


# ------------------------------------------------------------------------------------------------ where it is read


LAYOUTS = {  # name: (class_dim, causal LM, nested token labels, number of classes)
    "image-classification": (1, False, False, 3),
    "semantic-segmentation": (1, False, False, 4),
    "token-classification": (-1, False, True, 5),
    "sequence-classification": (1, False, False, 3),
    "multiple-choice": (1, False, False, 4),  # the 4 choices of the counts below, not config.num_labels (2)
    "causal-lm": (-1, True, True, 40),  # the vocabulary
    "audio-classification": (1, False, False, 3),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_loss_setup_reads_the_heads_layout(tmp_path, name):
    torch.manual_seed(0)
    model = MODELS[name]()
    counts = [5, 5, 5, 5] if name == "multiple-choice" else None
    setup = LossSetup(hem_args(tmp_path, margin=0.5), model, None, class_counts=counts)
    assert setup.head is head_named(name)
    assert (setup.class_dim, setup.causal_lm, setup.token_labels, setup.num_classes) == LAYOUTS[name]


def test_the_loss_setup_reads_an_unknown_head_as_a_classifier(tmp_path):
    class Scorer(torch.nn.Module):
        config = SimpleNamespace(num_labels=3)

    setup = LossSetup(hem_args(tmp_path, margin=0.5), Scorer(), None)
    assert setup.head is FALLBACK_HEAD
    assert (setup.class_dim, setup.causal_lm, setup.token_labels, setup.num_classes) == (1, False, False, 3)


def test_a_subclassed_token_classifier_gets_token_logits_in_the_loss(tmp_path):
    """The loss set-up once read `ForTokenClassification` off the class's own name: a subclass got `class_dim=1`."""

    class MyTagger(BertForTokenClassification):
        pass

    setup = LossSetup(hem_args(tmp_path, margin=0.5), tiny_bert(MyTagger, num_labels=3), None)
    assert setup.class_dim == -1 and setup.token_labels


def test_only_a_per_pixel_head_takes_the_configs_segmentation_ignore_index(tmp_path):
    """BEiT's image classifiers carry `semantic_loss_ignore_index=255`: with 300 classes, 255 is a class, not "no label"."""
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        num_labels=300,
    )
    assert config.semantic_loss_ignore_index == 255
    setup = LossSetup(hem_args(tmp_path, margin=0.5), BeitForImageClassification(config), None)
    assert setup.head is head_named("image-classification")
    assert setup.ignore_index == -100
    segmenter = MODELS["semantic-segmentation"]()
    setup = LossSetup(hem_args(tmp_path, margin=0.5), segmenter, None)
    assert setup.ignore_index == segmenter.config.semantic_loss_ignore_index


def test_the_card_takes_head_names_and_the_heads_card_facts():
    card = generate_model_card(model_name="m", task="semantic-segmentation", metrics={"eval_mean_iou": 0.5})
    assert card.data.pipeline_tag == "image-segmentation" and "AutoModelForSemanticSegmentation" in str(card)
    card = generate_model_card(model_name="m", task="causal-lm")
    assert card.data.pipeline_tag == "text-generation" and "AutoModelForCausalLM" in str(card)
    with pytest.raises(ValueError, match=r"`task`: no head named 'fill-mask'"):
        generate_model_card(model_name="m", task="fill-mask")


def test_upernet_segmenters_give_their_ignore_index_under_their_own_field_name(tmp_path):
    """UperNet names the field `loss_ignore_index`, not `semantic_loss_ignore_index`: its 255 once reached the loss as
    a label outside the classes."""
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], out_features=["stage1", "stage4"])
    config = UperNetConfig(
        backbone_config=backbone, hidden_size=8, use_auxiliary_head=False, num_labels=3, loss_ignore_index=200
    )
    assert not hasattr(config, "semantic_loss_ignore_index")
    setup = LossSetup(hem_args(tmp_path, margin=0.5), UperNetForSemanticSegmentation(config), None)
    assert setup.head is head_named("semantic-segmentation")
    assert setup.ignore_index == 200
