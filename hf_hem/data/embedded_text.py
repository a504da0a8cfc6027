"""Embedded text datasets and a tokenizer built on the spot, so the text pipelines run offline.

Neither dataset nor tokenizer is downloaded: the sentences are generated from small templates with a seeded random
generator, and the tokenizer is a WordPiece model whose vocabulary is built from the training texts (in well under a
second, the same in every process). Both datasets use the schema of their Hub counterparts, so the same pipeline code
handles them and real data alike:

* [`load_embedded_sentiment_dataset`]: `glue`/`sst2`-style rows `sentence`, `label` (`ClassLabel` negative /
  positive), `idx`;
* [`load_embedded_ner_dataset`]: `conll2003`-style rows `id`, `tokens`, `ner_tags` (a list of `ClassLabel` with the
  CoNLL-2003 names [`CONLL_NER_NAMES`]).

[`build_wordpiece_tokenizer`] makes a BERT-style tokenizer (`[CLS] a [SEP] b [SEP]`, token type ids) from any texts;
saved with the model it loads back with plain `AutoTokenizer`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value


__all__ = [
    "CONLL_NER_NAMES",
    "SENTIMENT_NAMES",
    "SPECIAL_TOKENS",
    "build_wordpiece_tokenizer",
    "load_embedded_ner_dataset",
    "load_embedded_sentiment_dataset",
]

#: Class names of `glue`/`sst2`, in class-id order.
SENTIMENT_NAMES = ("negative", "positive")
#: NER tag names of `conll2003`, in class-id order (IOB2).
CONLL_NER_NAMES = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
#: BERT's special tokens, in the order they get the first ids of a built vocabulary (`[PAD]` is 0).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_SUBJECTS = ("the film", "this movie", "the story", "the acting", "the script", "the soundtrack", "the cast")
_VERBS = ("is", "was", "feels", "seems", "looks")
_INTENSIFIERS = ("", "very", "really", "quite", "truly", "rather")
_ADJECTIVES = {
    0: ("bad", "awful", "boring", "dull", "terrible", "tedious", "clumsy", "weak", "lifeless"),
    1: ("good", "great", "wonderful", "brilliant", "charming", "delightful", "moving", "superb", "gripping"),
}
_FILLERS = ("", "overall", "honestly", "in the end", "from start to finish")

# Entities of each type as word lists; several-word names give B- then I- tags, and the rare long names are split
# into several WordPiece pieces by a small vocabulary, which exercises the sub-token label alignment.
_ENTITIES = {
    "PER": (
        ("John", "Smith"),
        ("Angela", "Merkel"),
        ("Maria",),
        ("Pierre", "Dubois"),
        ("Yuki", "Tanaka"),
        ("Oluwaseun", "Adeyemi"),
        ("Krzysztof", "Wojciechowski"),
    ),
    "ORG": (("Acme", "Corp"), ("Reuters",), ("United", "Nations"), ("Siemens",), ("Bundesbank",), ("FIFA",)),
    "LOC": (
        ("Paris",),
        ("New", "York"),
        ("Berlin",),
        ("Tokyo",),
        ("Lagos",),
        ("Reykjavik",),
        ("Rio", "de", "Janeiro"),
    ),
    "MISC": (("German",), ("French",), ("Olympic", "Games"), ("Euro", "2024"), ("Nobel", "Prize")),
}
_NER_TEMPLATES = (
    ("{PER}", "works", "for", "{ORG}", "in", "{LOC}", "."),
    ("{ORG}", "opened", "an", "office", "in", "{LOC}", "."),
    ("{PER}", "visited", "{LOC}", "with", "{PER}", "."),
    ("The", "{MISC}", "team", "beat", "{ORG}", "on", "Sunday", "."),
    ("{PER}", "said", "that", "{ORG}", "will", "expand", "."),
    ("Shares", "in", "{ORG}", "rose", "after", "the", "{MISC}", "report", "."),
    ("{PER}", "won", "the", "{MISC}", "in", "{LOC}", "."),
    ("It", "rained", "in", "{LOC}", "all", "week", "."),
)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _sentiment_rows(count: int, rng: np.random.Generator, start: int) -> dict[str, list]:
    # Balanced classes in shuffled order: a seeded permutation of 0, 1, 0, 1, ...
    labels = rng.permutation(np.arange(count) % 2)
    sentences = []
    for label in labels:
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_INTENSIFIERS), rng.choice(_ADJECTIVES[label])]
        if rng.random() < 0.4:  # a second adjective of the same polarity
            words += ["and", rng.choice(_ADJECTIVES[label])]
        words += [rng.choice(_FILLERS)]
        sentences.append(" ".join(word for word in words if word))
    return {"sentence": sentences, "label": labels.tolist(), "idx": list(range(start, start + count))}


def load_embedded_sentiment_dataset(num_train: int = 512, num_validation: int = 128, seed: int = 0) -> DatasetDict:
    """A small synthetic sentiment dataset in the schema of `glue`/`sst2`, built in memory.

    Each sentence says something positive or negative about a film ("the script is really dull and tedious"); the
    polarity words decide the label, so a tiny model learns it in a few epochs.

    Args:
        num_train (`int`, *optional*, defaults to 512): Training sentences.
        num_validation (`int`, *optional*, defaults to 128): Validation sentences.
        seed (`int`, *optional*, defaults to 0): Seed of the generator; the same seed gives the same dataset.

    Returns:
        `datasets.DatasetDict`: splits `train` and `validation` with columns `sentence` (`string`), `label`
        (`ClassLabel(names=["negative", "positive"])`) and `idx` (`int32`).
    """
    num_train = _check_int("num_train", num_train, 2)
    num_validation = _check_int("num_validation", num_validation, 2)
    rng = np.random.default_rng(seed)
    features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=list(SENTIMENT_NAMES)), "idx": Value("int32")}
    )
    return DatasetDict(
        {
            "train": Dataset.from_dict(_sentiment_rows(num_train, rng, 0), features=features),
            "validation": Dataset.from_dict(_sentiment_rows(num_validation, rng, 0), features=features),
        }
    )


def _ner_rows(count: int, rng: np.random.Generator) -> dict[str, list]:
    tag_ids = {name: index for index, name in enumerate(CONLL_NER_NAMES)}
    rows: dict[str, list] = {"id": [], "tokens": [], "ner_tags": []}
    for row in range(count):
        tokens, tags = [], []
        for slot in _NER_TEMPLATES[rng.integers(len(_NER_TEMPLATES))]:
            if slot.startswith("{"):
                kind = slot[1:-1]
                words = _ENTITIES[kind][rng.integers(len(_ENTITIES[kind]))]
                tokens += list(words)
                tags += [tag_ids[f"B-{kind}"]] + [tag_ids[f"I-{kind}"]] * (len(words) - 1)
            else:
                tokens.append(slot)
                tags.append(tag_ids["O"])
        rows["id"].append(str(row))
        rows["tokens"].append(tokens)
        rows["ner_tags"].append(tags)
    return rows


def load_embedded_ner_dataset(num_train: int = 512, num_validation: int = 128, seed: int = 0) -> DatasetDict:
    """A small synthetic named-entity dataset in the schema of `conll2003`, built in memory.

    Sentences come from templates ("John Smith works for Acme Corp in New York .") with persons, organisations,
    locations and miscellaneous names of one to three words, tagged in IOB2 as CoNLL-2003 is.

    Args:
        num_train (`int`, *optional*, defaults to 512): Training sentences.
        num_validation (`int`, *optional*, defaults to 128): Validation sentences.
        seed (`int`, *optional*, defaults to 0): Seed of the generator.

    Returns:
        `datasets.DatasetDict`: splits `train` and `validation` with columns `id` (`string`), `tokens` (list of
        `string`) and `ner_tags` (list of `ClassLabel(names=CONLL_NER_NAMES)`).
    """
    num_train = _check_int("num_train", num_train, 1)
    num_validation = _check_int("num_validation", num_validation, 1)
    rng = np.random.default_rng(seed)
    features = Features(
        {
            "id": Value("string"),
            "tokens": List(Value("string")),
            "ner_tags": List(ClassLabel(names=list(CONLL_NER_NAMES))),
        }
    )
    return DatasetDict(
        {
            "train": Dataset.from_dict(_ner_rows(num_train, rng), features=features),
            "validation": Dataset.from_dict(_ner_rows(num_validation, rng), features=features),
        }
    )


def _wordpiece_vocabulary(word_counts: Counter[str], vocab_size: int) -> dict[str, int]:
    """Token -> id: the special tokens, each character as a start and as a `##` continuation, then the most frequent
    whole words (ties by spelling) while the vocabulary is below `vocab_size`. Sorted throughout, so deterministic."""
    characters = sorted({character for word in word_counts for character in word})
    tokens = [*SPECIAL_TOKENS, *characters, *(f"##{character}" for character in characters)]
    known = set(tokens)
    for word, _ in sorted(word_counts.items(), key=lambda item: (-item[1], item[0])):
        if len(tokens) >= vocab_size:
            break
        if word not in known:
            tokens.append(word)
            known.add(word)
    return {token: index for index, token in enumerate(tokens)}


def build_wordpiece_tokenizer(
    texts: Iterable[str | Sequence[str]],
    vocab_size: int = 1000,
    lowercase: bool = False,
    model_max_length: int = 512,
):
    """A BERT-style WordPiece tokenizer whose vocabulary is built from `texts`, as a `transformers` fast tokenizer.

    The vocabulary is the special tokens [`SPECIAL_TOKENS`] (`[PAD]` = 0), every character of the texts (as a word
    start and as a `##` continuation), then whole words by frequency, ties by spelling, up to `vocab_size`; a word
    the vocabulary does not hold whole is split into the longest pieces it holds. Built this way, the same texts give
    the same tokenizer in every process: the `tokenizers` WordPiece trainer breaks ties between equally frequent
    merges in hash order, which differs from process to process, so a seeded run would not repeat. Single texts
    become `[CLS] a [SEP]` and pairs `[CLS] a [SEP] b [SEP]` with token type ids 0 and 1, as for BERT. Saved with
    `save_pretrained`, it loads back with plain `AutoTokenizer`.

    Args:
        texts (`Iterable[str | Sequence[str]]`): Training texts: strings, or pre-split word lists (CoNLL tokens).
        vocab_size (`int`, *optional*, defaults to 1000): Largest vocabulary, special tokens included; the
            characters are always kept (a text must stay encodable), so an alphabet larger than this leaves no room
            for whole words.
        lowercase (`bool`, *optional*, defaults to `False`): Lower-case the text first (keep `False` for NER, where
            capitals are a strong cue).
        model_max_length (`int`, *optional*, defaults to 512): Longest input the model takes.

    Returns:
        `transformers.PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab_size = _check_int("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    for text in texts:
        # Word lists are joined: the pre-tokenizer splits them again at the same places.
        joined = text if isinstance(text, str) else " ".join(text)
        word_counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(joined)))
    tokenizer = Tokenizer(models.WordPiece(_wordpiece_vocabulary(word_counts, vocab_size), unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # BERT takes segment ids; the generic fast tokenizer would not return them.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
