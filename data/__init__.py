"""Data sets of the DDU paper, read from their official on-disk formats, and fast loaders.

The registry (`data.registry`) is the single source of truth for names, class counts, shapes and
normalisation; `load_split` reads one split as raw tensors; `get_train_valid_loader` and
`get_test_loader` build the GPU-resident (default) or torchvision loaders. `folder:PATH` names a folder of
images as a data set (`data.folders`; options through `set_folder_options`). See `data/README.md`.

The Ambiguous-MNIST generator, which trains networks, is a tool above the engine: `python -m tools.ambiguous_mnist`
regenerates the set from MNIST. This package imports only `utils`.
"""

from data.loaders import (
    TensorLoader,
    TorchvisionLoader,
    get_test_loader,
    get_train_valid_loader,
    split_indices,
)
from data.registry import (
    DatasetInfo,
    canonical_name,
    dirty_parts,
    folder_options,
    folder_parser,
    folder_set,
    get_info,
    is_folder,
    list_datasets,
    set_folder_options,
)
from data.sources import load_split, svhn_file

__all__ = [
    "DatasetInfo",
    "TensorLoader",
    "TorchvisionLoader",
    "canonical_name",
    "dirty_parts",
    "folder_options",
    "folder_parser",
    "folder_set",
    "get_info",
    "get_test_loader",
    "get_train_valid_loader",
    "is_folder",
    "list_datasets",
    "load_split",
    "set_folder_options",
    "svhn_file",
    "split_indices",
]
