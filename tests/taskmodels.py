"""Model and data factories written the way a user writes them (``tests.taskmodels:NAME`` specs):
a sentence encoder with an attention mask, a regressor, a factory that raises, and user metrics.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

VOCAB, SEQ = 60, 12


class MaskedEncoder(nn.Module):
    """Token ids plus an attention mask -> a sentence embedding (mean over unmasked tokens).

    With ``normalize`` the rows have unit length, as sentence-transformers' encoders return them.
    An all-zero mask gives 0/0: NaN, as real BERT-family encoders do.
    """

    def __init__(self, dim: int = 32, out: int = 24, normalize: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, 48), nn.ReLU(), nn.Linear(48, dim))
        self.out = nn.Linear(dim, out)
        self.normalize = normalize

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        h = self.embed(ids)
        scores = self.q(h) @ self.k(h).transpose(1, 2) / h.shape[-1] ** 0.5
        scores = scores + (1.0 - m[:, None, :]) * -1e4
        h = h + torch.softmax(scores, -1) @ self.v(h)
        h = h + self.ff(h)
        pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        emb = self.out(pooled)
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb


def _token_examples() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, SEQ, dtype=torch.int64), torch.ones(1, SEQ, dtype=torch.int64)


def encoder(task: str | None = None) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    """A sentence encoder that says its task (the README's way: the info dict)."""
    info = {"task": task or "embedding", "name": "masked_encoder"}
    return MaskedEncoder().eval(), _token_examples(), info


def unnamed_encoder() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The same encoder, unit-length rows, no info dict: its task must be guessed."""
    return MaskedEncoder(out=24, normalize=True).eval(), _token_examples()


def wide_unlabelled_encoder() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """384 values per sentence and no labels: an embedding, not a 384-way classifier."""
    return MaskedEncoder(out=384).eval(), _token_examples()


def sentences(seed: int = 0, n: int = 160) -> dict[str, np.ndarray]:
    """Token ids and attention masks of ``n`` sentences of 4 to 12 tokens, no labels."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).astype(np.int64)
    lengths = rng.integers(4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    return {"x0": ids * mask, "x1": mask}


def few_sentences(seed: int = 0) -> dict[str, np.ndarray]:
    return sentences(seed, n=16)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def regressor() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    return Regressor().eval(), (torch.zeros(1, 6),), {"task": "regression"}


def regression_data(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(300, 6)).astype(np.float32)}


def broken_factory() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    raise RuntimeError("weights file /models/enc.bin not found\n  (a second line of detail)")


def top2_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """A user metric: the label is among the two highest scores."""
    top2 = np.argsort(np.asarray(outputs).reshape(len(labels), -1), axis=1)[:, -2:]
    return float(np.mean([label in row for label, row in zip(labels, top2, strict=True)]))


def negative_distance(outputs: np.ndarray, reference: np.ndarray) -> float:
    """A user metric for unlabelled outputs: minus the mean Euclidean distance to the reference."""
    a = np.asarray(outputs, dtype=np.float64).reshape(len(reference), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    return -float(np.mean(np.linalg.norm(a - b, axis=1)))
