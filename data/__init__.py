"""Data sets of the DDU paper, read from their official on-disk formats, and fast loaders.

The registry (`data.registry`) is the single source of truth for names, class counts, shapes and
normalisation; `load_split` reads one split as raw tensors; `get_train_valid_loader` and
`get_test_loader` build the GPU-resident (default) or torchvision loaders. See `data/README.md`.

`data.ambiguous_mnist` (imported on its own, run as `python -m data.ambiguous_mnist`) regenerates
Ambiguous-MNIST from MNIST, one module per stage.
"""

from data.loaders import (
    TensorLoader,
    TorchvisionLoader,
    get_test_loader,
    get_train_valid_loader,
    split_indices,
)
from data.registry import DatasetInfo, canonical_name, dirty_parts, get_info, list_datasets
from data.sources import load_split, svhn_file

__all__ = [
    "DatasetInfo",
    "TensorLoader",
    "TorchvisionLoader",
    "canonical_name",
    "dirty_parts",
    "get_info",
    "get_test_loader",
    "get_train_valid_loader",
    "list_datasets",
    "load_split",
    "svhn_file",
    "split_indices",
]
