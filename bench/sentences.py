"""A few hundred short English sentences on four topics, written for the encoder bench, and a
word-level tokenizer for them (nothing is downloaded: the vocabulary is built from these sentences).

The sentences come from hand-written subjects, verbs and objects per topic, combined with a fixed
seed; the topic is the label the encoder is briefly fine-tuned on before it is compressed.
"""

from __future__ import annotations

import itertools
import random
import re

import numpy as np

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "weather": (
        (
            "the wind",
            "a cold front",
            "the morning fog",
            "heavy rain",
            "the summer storm",
            "a light drizzle",
            "the snow",
            "the forecast",
        ),
        (
            "swept across",
            "settled over",
            "moved toward",
            "soaked",
            "covered",
            "cleared from",
            "lingered above",
            "drifted past",
        ),
        (
            "the valley",
            "the coast tonight",
            "the northern hills",
            "our small town",
            "the airport runway",
            "the frozen lake",
            "the mountain pass",
            "the city by noon",
        ),
    ),
    "cooking": (
        (
            "my grandmother",
            "the young chef",
            "our neighbour",
            "the baker",
            "a hungry student",
            "the cook",
            "my brother",
            "the restaurant owner",
        ),
        ("roasted", "stirred", "baked", "chopped", "seasoned", "simmered", "fried", "served"),
        (
            "the garlic and onions",
            "a pot of tomato soup",
            "fresh bread for breakfast",
            "the carrots with butter",
            "a spicy lentil curry",
            "the chicken with lemon",
            "sweet apple pie",
            "rice with beans",
        ),
    ),
    "sport": (
        (
            "the striker",
            "our goalkeeper",
            "the home team",
            "a tired runner",
            "the coach",
            "the young swimmer",
            "the tennis player",
            "the referee",
        ),
        (
            "scored against",
            "defended against",
            "raced past",
            "trained with",
            "celebrated with",
            "argued with",
            "beat",
            "lost to",
        ),
        (
            "the visiting side",
            "the league champions",
            "the crowd in the stadium",
            "the rival club",
            "the fastest sprinter",
            "the defending champion",
            "the national team",
            "the team from the north",
        ),
    ),
    "computing": (
        (
            "the compiler",
            "a new laptop",
            "the web server",
            "the database",
            "my program",
            "the operating system",
            "the network card",
            "the script",
        ),
        (
            "crashed while loading",
            "quickly compiled",
            "slowly indexed",
            "downloaded",
            "encrypted",
            "cached",
            "parsed",
            "deleted",
        ),
        (
            "the log files",
            "a large dataset",
            "the source code",
            "every user record",
            "the configuration file",
            "the system update",
            "the memory pages",
            "the shared library",
        ),
    ),
}

PAD, CLS, UNK = 0, 1, 2


def sentences(per_topic: int = 80, seed: int = 0) -> tuple[list[str], list[int]]:
    """``per_topic`` distinct sentences per topic (shuffled) and their topic indices."""
    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, (subjects, verbs, objects) in enumerate(TOPICS.values()):
        combos = list(itertools.product(subjects, verbs, objects))
        rng.shuffle(combos)
        for subject, verb, obj in combos[:per_topic]:
            texts.append(f"{subject} {verb} {obj}.")
            labels.append(label)
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.,]", text.lower())


class WordTokenizer:
    """Lower-case words and punctuation; id 0 pads, 1 starts every sentence, 2 is unknown."""

    def __init__(self, texts: list[str]) -> None:
        vocab = sorted({w for t in texts for w in _words(t)})
        self.ids = {w: i + 3 for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.ids) + 3

    def encode(self, texts: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, attention mask), both int64 of shape (len(texts), seq_len)."""
        ids = np.full((len(texts), seq_len), PAD, dtype=np.int64)
        mask = np.zeros((len(texts), seq_len), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [CLS] + [self.ids.get(w, UNK) for w in _words(text)]
            tokens = tokens[:seq_len]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask
