#!/usr/bin/env python
"""Train or fine-tune a causal language model with HEM instead of cross-entropy (one HEM sample per predicted token).

Runs as is under plain python and under `accelerate launch`. Without a dataset it trains a small Llama, with a
word-level tokenizer built from the data, on an embedded text of short English sentences, offline:

    python scripts/run_clm.py --output_dir clm-hem
    python scripts/run_clm.py --train_file train.txt --validation_file valid.txt --output_dir txt-hem
    python scripts/run_clm.py --dataset_name roneneldan/TinyStories --max_train_samples 20000 --max_seq_length 256 \\
        --model_type gpt2 --hidden_size 256 --num_layers 4 --output_dir tinystories-hem --push_to_hub
    python scripts/run_clm.py --model_name_or_path <causal LM> --train_file train.jsonl --text_column_name text \\
        --learning_rate 2e-5 --num_train_epochs 1 --output_dir sft-hem --loss_name hem --causal_lm_margin 1.0

The margin of every token is `--causal_lm_margin` (default 1.0) unless `--margin` is given; `--loss_name hem+` counts
the training set's tokens once for per-token margins; `--loss_name ce` trains the same run with cross-entropy. Every
argument of `CausalLMModelArguments`, `CausalLMDataArguments` (hf_hem.pipelines.causal_lm) and `HEMConfig` is a flag;
a single `.yaml`/`.json` file may come first, followed by flags that override it. The logic lives in
`hf_hem.pipelines.causal_lm`; see docs/language_models.md.
"""

import sys

from hf_hem.pipelines import run_script
from hf_hem.pipelines.causal_lm import parse_clm_args, run_clm


def main(argv=None) -> int:
    """Parse the arguments (flags, or a config file then flags), train, evaluate, save and push; 1 if the push failed."""
    return run_script(parse_clm_args, run_clm, argv)


if __name__ == "__main__":
    sys.exit(main())
