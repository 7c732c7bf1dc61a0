"""The classic MNIST VAE pipeline that the image benchmarks compare vaelab against.

It follows pytorch/examples ``vae/main.py`` and the torchvision MNIST dataset it uses: a
``Dataset`` that returns one image at a time (uint8 array -> PIL image -> tensor -> /255), a
``DataLoader`` with batch 128 and shuffling, the 784-400-20 model with ``sigmoid`` outputs and
``binary_cross_entropy(reduction="sum")`` + the analytic KL, and Adam 1e-3. Like that example
it trains on grey levels (no binarization).

``to_vaelab`` copies its weights into a vaelab VAE with the same architecture, so both models
are scored by the same evaluation code on the same (binarized) test images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from vaelab.config import ModelConfig
from vaelab.models import VAE, build_model


class PilMnist(TorchDataset):
    """One (image, label) at a time, as torchvision.datasets.MNIST + transforms.ToTensor() do."""

    def __init__(self, images_uint8: np.ndarray, labels: np.ndarray) -> None:
        self.data = images_uint8  # (N, 28, 28) uint8
        self.targets = labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = Image.fromarray(self.data[i], mode="L")  # what torchvision's MNIST returns
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).unsqueeze(0)  # ToTensor: (1, 28, 28)
        return x.float().div(255.0), int(self.targets[i])


class ReferenceVAE(nn.Module):
    """pytorch/examples' VAE: fc1 784->400, fc21/fc22 400->20, fc3 20->400, fc4 400->784."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def loss_function(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def make_loader(images_uint8: np.ndarray, labels: np.ndarray, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(PilMnist(images_uint8, labels), batch_size=128, shuffle=True, generator=g)


def train_epoch(model: ReferenceVAE, loader: DataLoader, optimizer: torch.optim.Optimizer) -> float:
    """One epoch exactly as pytorch/examples does it; returns the mean loss per image."""
    model.train()
    total = 0.0
    for data, _ in loader:
        optimizer.zero_grad()
        recon, mu, logvar = model(data)
        loss = loss_function(recon, data, mu, logvar)
        loss.backward()
        total += loss.item()
        optimizer.step()
    return total / len(loader.dataset)


def to_vaelab(ref: ReferenceVAE) -> VAE:
    """The same network as a vaelab VAE (784-400-20 ReLU, log σ² scale, Bernoulli logits).

    sigmoid(fc4(...)) is Bernoulli(logits=fc4(...)), and vaelab's encoder head outputs
    [μ, log σ²] stacked, so fc21 and fc22 are concatenated.
    """
    cfg = ModelConfig(hidden=[400], latent_dim=20, activation="relu", likelihood="bernoulli", scale="logvar")
    model = build_model(cfg, 784, seed=0)
    with torch.no_grad():
        enc, dec = model.encoder, model.decoder
        enc[0].weight.copy_(ref.fc1.weight)
        enc[0].bias.copy_(ref.fc1.bias)
        enc[2].weight.copy_(torch.cat([ref.fc21.weight, ref.fc22.weight]))
        enc[2].bias.copy_(torch.cat([ref.fc21.bias, ref.fc22.bias]))
        dec[0].weight.copy_(ref.fc3.weight)
        dec[0].bias.copy_(ref.fc3.bias)
        dec[2].weight.copy_(ref.fc4.weight)
        dec[2].bias.copy_(ref.fc4.bias)
    return model.eval()
