"""Ambiguous-MNIST regenerated from MNIST alone: this project's regeneration, not the released set.

DDU (Mukhoti et al. 2021, "Deterministic Neural Networks with Appropriate Inductive Biases Capture
Epistemic and Aleatoric Uncertainty") uses Dirty-MNIST in Fig. 1 and 2 and in its active-learning runs:
MNIST plus Ambiguous-MNIST, digits that are genuinely ambiguous between classes yet look like handwriting,
each with several labels drawn from a predictive distribution. The released files cannot be downloaded
everywhere, so this package builds a set in the same spirit and in exactly the released format:

1. Fit a small convolutional VAE (Kingma & Welling 2014) to MNIST training digits.
2. Train an ensemble of small MNIST classifiers (LeNets from `net`, different seeds).
3. Candidates: decode convex combinations of the latent means of two or three training digits of
   different classes (weights drawn from a symmetric Dirichlet), i.e. points between classes on the
   VAE's learnt digit manifold rather than pixel blends.
4. Keep candidates the ensemble finds ambiguous but not foreign: predictive entropy `H[mean_m p_m]` at
   least `--min-entropy` (aleatoric), mutual information `H[mean p] - mean_m H[p_m]` at most `--max-mi`
   (the members agree, so the uncertainty is not epistemic), and log feature density, under DDU's
   class-conditional Gaussians fitted to each member's MNIST features, above the `--density-quantile`
   of MNIST's own (the candidate sits near data; this is DDU's epistemic score used as a filter).
5. Draw each kept sample's labels (10 by default) from the ensemble's mean softmax.

Train and test samples are decoded from disjoint halves of the source digits, so no source digit appears
in both. MNIST's test split is never used for generation; `--evaluate` uses it to check the result with
an independent classifier (by default a ResNet-18: another architecture and seed, trained on clean MNIST).

Outputs in `--out` (what the `dirty_mnist` loader reads): `amnist_samples.pt` float32 `(N, 1, 28, 28)` in
[0, 1] and `amnist_labels.pt` int64 `(N, K)`, train samples first, then test; `amnist_manifest.json`
(seed, counts, settings, label-entropy histogram, timings) and `amnist_grid.png` (one row per majority
class, samples ordered left to right by increasing label entropy).

Modules, in the order the pipeline runs them: `vae` (step 1), `classifiers` (step 2 and the scores of step 4),
`candidates` (steps 3-5), `report` (files, manifest, grid and the independent check), `pipeline` (the
command line and `generate`, one function per stage); `shared` holds the file names and seed offsets.

Run:
    python -m tools.ambiguous_mnist --mnist-root DATA --out DATA                  # 6000 + 6000 samples
    python -m tools.ambiguous_mnist --mnist-root DATA --out DATA --device cuda --evaluate
    python -m tools.ambiguous_mnist --mnist-root DATA --out DATA --evaluate-only  # re-check existing files
    python -m tools.ambiguous_mnist --mnist-root DATA --out DATA --num-threads 1    # on a busy shared CPU
    python -m tools.ambiguous_mnist --mnist-root DATA --out DATA --overwrite      # replace an existing set
    python -m tools.ambiguous_mnist --mnist-root DATA --out /tmp/am --max-mnist 2000 --train 100 --test 100 \
        --vae-epochs 4 --vae-batch-size 32 --vae-lr 3e-3 --classifier-epochs 4 --classifier-batch-size 64 \
        --ensemble-size 3 --candidate-batch 1024                                  # small: ~15 s on one thread

A run never replaces a set already in `--out` (generated, or the released files) unless `--overwrite` is given;
`--evaluate-only` reads such a set and only updates its manifest's quality section.

What a small run needs is optimiser steps, not epochs: one epoch is `--max-mnist / batch size` steps, so 2,000
digits at the default batch of 128 give 16. The VAE needs a few hundred steps to leave the "mean digit"
plateau (hence the small batches and higher learning rate above: 252 steps) and the classifiers some hundred
to be confident on clean digits (128 steps, 92% training accuracy); with fewer, every candidate is grey fog far
from MNIST's features, which the density filter rightly rejects, and the run stops with a message that names
the step counts. The thresholds stay fixed: relaxing them to what weak models allow would keep that fog.
"""

from tools.ambiguous_mnist.candidates import _distinct_class_partner as _distinct_class_partner
from tools.ambiguous_mnist.candidates import (
    dirichlet,
    draw_labels,
    generate_split,
    make_candidates,
    select_ambiguous,
)
from tools.ambiguous_mnist.classifiers import (
    Ensemble,
    build_ensemble,
    ensemble_scores,
    normalize,
    predict,
    train_classifier,
)
from tools.ambiguous_mnist.pipeline import (
    check_args,
    evaluate_existing,
    generate,
    get_args_parser,
    load_mnist,
    main,
    random_subset,
)
from tools.ambiguous_mnist.report import (
    ENTROPY_BIN_EDGES,
    build_manifest,
    evaluate_quality,
    label_entropy_summary,
    render_grid,
)
from tools.ambiguous_mnist.shared import GRID_FILE, LABELS_FILE, MANIFEST_FILE, NUM_CLASSES, SAMPLES_FILE
from tools.ambiguous_mnist.vae import ConvVAE, train_vae, vae_loss

__all__ = [
    "ENTROPY_BIN_EDGES",
    "GRID_FILE",
    "LABELS_FILE",
    "MANIFEST_FILE",
    "NUM_CLASSES",
    "SAMPLES_FILE",
    "ConvVAE",
    "Ensemble",
    "build_ensemble",
    "build_manifest",
    "check_args",
    "dirichlet",
    "draw_labels",
    "ensemble_scores",
    "evaluate_existing",
    "evaluate_quality",
    "generate",
    "generate_split",
    "get_args_parser",
    "label_entropy_summary",
    "load_mnist",
    "main",
    "make_candidates",
    "normalize",
    "predict",
    "random_subset",
    "render_grid",
    "select_ambiguous",
    "train_classifier",
    "train_vae",
    "vae_loss",
]
