"""Reproductions of the DDU paper's claims (Mukhoti et al., arXiv 2102.11582), one thin module each.

    python -m experiments.dirty_mnist --scale cpu|gpu|smoke      # Fig. 1 and its table (Dirty-MNIST)
    python -m experiments.cifar10 --scale cpu|gpu|smoke          # CIFAR-10 vs Tiny-ImageNet: DDU vs softmax
    python -m experiments.al_curves --scale cpu|gpu|smoke  # active learning on MNIST

Each builds on the top-level scripts (train.py, evaluate.py, active_learning.py through their
`get_args_parser()` and `main(args)`), prints its scale preset and what differs from the paper, writes
`results/repro/NAME_SCALE.json` and a PNG figure, and prints a Markdown table. `experiments/gpu/` holds one
shell script per experiment for a single short run on a lent GPU (see benchmarks/GPU_EXPERIMENTS.md).
"""
