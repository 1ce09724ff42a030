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
    """A sentence encoder that says its task (the user guide's way: the info dict)."""
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


# ---------------------------------------------------------------- models users bring (bench.models)


class SequenceClassifier(nn.Module):
    """A recurrent classifier of sequences of feature vectors (the digits' 8 rows of 8 pixels):
    the last step of the recurrent layer's sequence output, or its final state, into a Linear."""

    def __init__(
        self,
        kind: str = "GRU",
        features: int = 8,
        hidden: int = 64,
        layers: int = 1,
        bidirectional: bool = False,
        classes: int = 10,
        final_state: bool = False,
    ) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(
            features, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional
        )
        self.final_state = final_state
        width = hidden * (2 if bidirectional and not final_state else 1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)
        if self.final_state:
            h = state[0] if isinstance(state, tuple) else state
            return self.head(h[-1])
        return self.head(out[:, -1])


def gru_classifier(hidden: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    """A one-layer GRU over the digits' rows."""
    model = SequenceClassifier("GRU", hidden=hidden)
    return model.eval(), (torch.zeros(1, 8, 8),), {"task": "classification", "name": "gru"}


def lstm_classifier(hidden: int = 48) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    """A stacked (2 layers) bidirectional LSTM over the digits' rows."""
    model = SequenceClassifier("LSTM", hidden=hidden, layers=2, bidirectional=True)
    return model.eval(), (torch.zeros(1, 8, 8),), {"task": "classification", "name": "lstm"}


class TwoHeadNet(nn.Module):
    """A small conv net with two outputs: class scores and a box (the ink's bounding box)."""

    def __init__(self, channels: int = 16, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * channels),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
        )
        self.classes = nn.Linear(hidden, classes)
        self.box = nn.Linear(hidden, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.classes(features), self.box(features)


def two_head_net() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    return TwoHeadNet().eval(), (torch.zeros(1, 1, 8, 8),), {"task": "classification"}


class MLPRegressor(nn.Module):
    def __init__(self, features: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_regressor(features: int = 10) -> tuple[nn.Module, tuple[torch.Tensor, ...], dict]:
    return MLPRegressor(features).eval(), (torch.zeros(1, features),), {"task": "regression"}


def digit_rows(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's digits as sequences: 8 steps (rows) of 8 pixel values in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return {
        "x": (digits.images / 16.0).astype(np.float32),
        "y": digits.target.astype(np.int64),
    }


def ink_boxes(images: np.ndarray) -> np.ndarray:
    """The bounding box (left, top, right, bottom, in [0, 1]) of each image's non-zero pixels."""
    boxes = np.zeros((len(images), 4), np.float32)
    for i, image in enumerate(images):
        rows = np.flatnonzero(image.any(axis=1))
        cols = np.flatnonzero(image.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes / images.shape[-1]


def digits_with_boxes(seed: int = 0) -> dict[str, np.ndarray]:
    """The digits with two target arrays: the class (y0) and the ink's bounding box (y1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    return {
        "x": images[:, None],
        "y0": digits.target.astype(np.int64),
        "y1": ink_boxes(digits.images),
    }


def diabetes(seed: int = 0) -> dict[str, np.ndarray]:
    """scikit-learn's diabetes regression set (442 x 10), the target standardized."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    y = data.target.astype(np.float64)
    return {
        "x": data.data.astype(np.float32),
        "y": ((y - y.mean()) / y.std()).astype(np.float32),
    }


def class_and_box_error(outputs: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """A user metric over two outputs and two targets: accuracy minus the mean box error."""
    scores, boxes = outputs
    labels, truth = targets
    accuracy = float(np.mean(np.argmax(scores, axis=1) == labels))
    return accuracy - float(np.mean(np.abs(np.asarray(boxes) - truth)))


def hf_output_classifier() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """transformers' ConvNeXt as it comes: its forward returns an ImageClassifierOutput."""
    import transformers

    config = transformers.ConvNextConfig(
        num_channels=3,
        hidden_sizes=[8, 8, 16, 16],
        depths=[1, 1, 1, 1],
        image_size=16,
        num_labels=10,
    )
    return transformers.ConvNextForImageClassification(config).eval(), (torch.zeros(1, 3, 32, 32),)


class DictOutputNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.fc(x)
        return {"scores": out[:, :2], "boxes": out[:, 2:]}


def dict_output_net() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return DictOutputNet().eval(), (torch.zeros(1, 4),)
