"""The plots of the experiment reports, split by what they draw: `curves` (learning curves, margin sweeps), `scores`
(score histograms, ROC, reliability), `bars` (per-class bars), `segmentation` (masks); one `palette` for all."""
