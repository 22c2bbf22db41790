"""Stage 1 of the generator: a small convolutional VAE (Kingma & Welling 2014) fitted to MNIST digits, whose
latent space the candidates are mixed in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tools.ambiguous_mnist.shared import fit_epochs


class ConvVAE(nn.Module):
    """A small convolutional VAE for 1x28x28 images in [0, 1] with a Bernoulli decoder.

    Two stride-2 convolutions (28 -> 14 -> 7) and one linear layer give the Gaussian posterior
    `q(z | x) = N(mu, diag(exp(logvar)))`; the decoder mirrors them with transposed convolutions and
    returns pixel logits. Small on purpose: it must train in minutes on a CPU, and a smooth,
    low-dimensional latent space keeps interpolations between digits digit-like. Batch normalisation
    and no hidden fully connected layer make it leave the "mean digit" plateau early: after 250 steps
    of 32 digits the reconstruction NLL was 103 nats against 141 with a 256-unit hidden layer and no
    batch normalisation, which matters for the short settings used in tests.
    """

    def __init__(self, latent_dim: int = 16, width: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 2 * latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 2 * width * 7 * 7),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, 7, 7)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(B, 1, 28, 28)` in [0, 1] -> posterior mean and log-variance, each `(B, latent_dim)`."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, latent_dim)` -> Bernoulli logits `(B, 1, 28, 28)`."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`(B, latent_dim)` -> mean image `(B, 1, 28, 28)` in [0, 1] (grey levels, like MNIST's)."""
        return torch.sigmoid(self.decode_logits(z))


def vae_loss(vae: ConvVAE, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Negative ELBO per image: Bernoulli reconstruction NLL (summed over pixels) plus KL to N(0, I).

    MNIST grey levels are used directly as Bernoulli targets (the usual continuous relaxation).
    """
    mu, logvar = vae.encode(x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + eps * (0.5 * logvar).exp()
    recon = F.binary_cross_entropy_with_logits(vae.decode_logits(z), x, reduction="sum")
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
    return (recon + kl) / x.shape[0]


def train_vae(
    images: torch.Tensor,
    *,
    epochs: int,
    latent_dim: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[ConvVAE, float]:
    """Fit a `ConvVAE` to `images` `(N, 1, 28, 28)` float in [0, 1] (on the training device).

    Adam, constant learning rate; returns the model in eval mode and the last epoch's mean loss (nats per
    image, the negative ELBO) for the manifest.
    """
    torch.manual_seed(seed)
    vae = ConvVAE(latent_dim).to(images.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    noise_gen = torch.Generator(device=images.device).manual_seed(seed + 1)
    losses = fit_epochs(
        vae,
        optimizer,
        images,
        lambda idx: vae_loss(vae, images[idx], noise_gen),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        desc="VAE",
        loss_name="neg_elbo",
        progress=progress,
    )
    return vae.eval(), losses[-1] if losses else float("nan")
