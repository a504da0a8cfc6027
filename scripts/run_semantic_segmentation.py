#!/usr/bin/env python
"""Train a semantic segmenter (SegFormer) with per-pixel HEM (or any hf_hem loss) instead of cross-entropy.

Runs as is under plain python and under `accelerate launch` (single GPU, several GPUs, or 2 CPU processes; configs in
`configs/accelerate/`). Without a dataset it trains a tiny SegFormer on the embedded synthetic digit scenes, offline:

    python scripts/run_semantic_segmentation.py --output_dir digits-seg-hem
    python scripts/run_semantic_segmentation.py --dataset_name scene_parse_150 --model_name_or_path nvidia/mit-b0 \\
        --loss_name hem --output_dir segformer-b0-hem-ade
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scripts/run_semantic_segmentation.py config.yaml

Every argument of `SegmentationModelArguments`, `SegmentationDataArguments` (hf_hem.pipelines.semantic_segmentation)
and `HEMConfig` is a flag; a single `.yaml`/`.json` file may come first, followed by flags that override it. All the
logic lives in `hf_hem.pipelines.semantic_segmentation`.
"""

import sys

from hf_hem.pipelines import parse_semantic_segmentation_args, run_script, run_semantic_segmentation


def main(argv=None) -> int:
    """Parse the arguments (flags, or a config file then flags), train, evaluate, save and push; 1 if the push failed."""
    return run_script(parse_semantic_segmentation_args, run_semantic_segmentation, argv)


if __name__ == "__main__":
    sys.exit(main())
