"""One forward pass per model and data set: logits, penultimate features and labels, reused by every score.

The original DDU code runs the network again for each metric (accuracy, ECE, each AUROC, the GMM
embeddings); here one pass yields everything those need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from utils.device import autocast_context


@dataclass
class Outputs:
    """Network outputs on one data set: `logits (N, C)` and `features (N, D)` in float32, `labels (N,)`."""

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @staticmethod
    def concat(parts: list["Outputs"]) -> "Outputs":
        return Outputs(
            torch.cat([p.logits for p in parts]),
            torch.cat([p.features for p in parts]),
            torch.cat([p.labels for p in parts]),
        )


@torch.no_grad()
def collect_outputs(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    progress=None,
) -> Outputs:
    """Run `model` (eval mode) over `loader` once; features come from `model.forward_features`."""
    was_training = model.training
    model.eval()
    logits, features, labels = [], [], []
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, precision):
                z = model.forward_features(x)
                out = model.forward_head(z)
            features.append(z.float())
            logits.append(out.float())
            labels.append(y.to(device))
            if progress is not None:
                progress.update(1)
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the loader yielded no batches")
    return Outputs(torch.cat(logits), torch.cat(features), torch.cat(labels))
