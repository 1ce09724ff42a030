"""Real architectures from Hugging Face transformers' own model classes, built offline from configs.

Nobody here wrote these networks: ``ResNetForImageClassification`` (ResNet-18 layout),
``MobileNetV2ForImageClassification``, ``EfficientNetForImageClassification`` (B0 coefficients),
``ViTForImageClassification``, ``ConvNextForImageClassification`` (depthwise 7x7 convolutions,
channels-last LayerNorm, Linear pointwise layers, GELU, layer scales) and ``BertModel``
(mean-pooled sentence embedding over the attention mask). Each is built from a config with freshly initialised weights (nothing is downloaded) and
wrapped so that it returns a plain tensor, as torch.export and every compression step expect.

They deliberately take no ``width`` argument, like a user's torchvision or timm factory: a
distillation student of one of them is made by structured pruning of the teacher.

    load_model("builtin:hf_resnet18?num_classes=10&image_size=32")
    load_model("builtin:hf_bert?vocab_size=400&seq_len=16")

transformers is an optional dependency (the ``dev`` extra pins it); without it these entries fail
with a message saying what to install.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from host.errors import ModelSpecError
from host.models import MODELS, ModelBundle

logger = logging.getLogger(__name__)

TRANSFORMERS_PIN = "transformers==5.24.0"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelSpecError(
            f"the hf_* builtin models need Hugging Face transformers: pip install '{TRANSFORMERS_PIN}'"
        ) from exc
    return transformers


class ImageLogits(nn.Module):
    """``*ForImageClassification`` -> the logits tensor (torch.export wants tensors, not outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class MeanPooledEncoder(nn.Module):
    """A BERT-family encoder as a sentence embedder: hidden states averaged over the real tokens.

    Inputs are two integer tensors, token ids and the attention mask (1 for tokens, 0 for padding).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def _check_image(num_classes: int, image_size: int, channels: int) -> None:
    if num_classes < 2:
        raise ModelSpecError(f"num_classes must be at least 2, got {num_classes}")
    if image_size < 8 or channels < 1:
        raise ModelSpecError(
            f"image_size must be >= 8 and channels >= 1, got {image_size} and {channels}"
        )


def _image_bundle(
    model: nn.Module, name: str, num_classes: int, image_size: int, channels: int
) -> ModelBundle:
    # eager attention: one plain softmax(QK^T)V that every exporter and tracer understands.
    return ModelBundle(
        module=ImageLogits(model).eval(),
        example_inputs=(torch.randn(1, channels, image_size, image_size),),
        name=name,
        task="classification",
        num_classes=num_classes,
        factory=f"builtin:{name}",
    )


@MODELS.register("hf_resnet18")
def hf_resnet18(
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    hidden_sizes: tuple[int, ...] | list[int] = (64, 128, 256, 512),
    depths: tuple[int, ...] | list[int] = (2, 2, 2, 2),
) -> ModelBundle:
    """ResNet-18 (basic blocks, 2-2-2-2) as ``ResNetForImageClassification``; ~11.2 M params."""
    _check_image(num_classes, image_size, channels)
    tf = _transformers()
    config = tf.ResNetConfig(
        num_channels=channels,
        embedding_size=int(hidden_sizes[0]),
        hidden_sizes=[int(h) for h in hidden_sizes],
        depths=[int(d) for d in depths],
        layer_type="basic",
        num_labels=num_classes,
    )
    return _image_bundle(
        tf.ResNetForImageClassification(config), "hf_resnet18", num_classes, image_size, channels
    )


@MODELS.register("hf_mobilenetv2")
def hf_mobilenetv2(
    num_classes: int = 10, image_size: int = 32, channels: int = 3, depth_multiplier: float = 1.0
) -> ModelBundle:
    """MobileNetV2 (inverted residuals, ReLU6) as ``MobileNetV2ForImageClassification``."""
    _check_image(num_classes, image_size, channels)
    tf = _transformers()
    config = tf.MobileNetV2Config(
        num_channels=channels,
        image_size=image_size,
        depth_multiplier=depth_multiplier,
        num_labels=num_classes,
    )
    return _image_bundle(
        tf.MobileNetV2ForImageClassification(config),
        "hf_mobilenetv2",
        num_classes,
        image_size,
        channels,
    )


@MODELS.register("hf_efficientnet_b0")
def hf_efficientnet_b0(
    num_classes: int = 10, image_size: int = 32, channels: int = 3
) -> ModelBundle:
    """EfficientNet with the B0 coefficients (width 1.0, depth 1.0, 1280-d head, SiLU, SE)."""
    _check_image(num_classes, image_size, channels)
    tf = _transformers()
    config = tf.EfficientNetConfig(
        num_channels=channels,
        image_size=image_size,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        dropout_rate=0.2,
        num_labels=num_classes,
    )
    model = tf.EfficientNetForImageClassification(config)
    # transformers 5.24 initialises EfficientNet's batch-norm scales like its weights, from
    # N(0, 0.02): each of its 49 batch norms shrinks the signal fifty-fold, every sample reaches the
    # head as the same vector and training from scratch never leaves ln(10) loss (pretrained
    # weights overwrite them, so hub users never see it). Scales of one, as torch initialises them.
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.weight.fill_(1.0)
                layer.bias.zero_()
    return _image_bundle(
        model,
        "hf_efficientnet_b0",
        num_classes,
        image_size,
        channels,
    )


@MODELS.register("hf_vit")
def hf_vit(
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    patch_size: int = 4,
    hidden_size: int = 192,
    layers: int = 6,
    heads: int = 3,
    intermediate_size: int = 768,
) -> ModelBundle:
    """A ViT (ViT-Tiny widths, 6 layers, 4x4 patches at 32 px) as ``ViTForImageClassification``."""
    _check_image(num_classes, image_size, channels)
    if hidden_size % heads:
        raise ModelSpecError(f"hidden_size {hidden_size} is not a multiple of heads {heads}")
    tf = _transformers()
    config = tf.ViTConfig(
        num_channels=channels,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        num_labels=num_classes,
        attn_implementation="eager",
    )
    return _image_bundle(
        tf.ViTForImageClassification(config), "hf_vit", num_classes, image_size, channels
    )


@MODELS.register("hf_convnext")
def hf_convnext(
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    hidden_sizes: tuple[int, ...] | list[int] = (40, 80, 160, 320),
    depths: tuple[int, ...] | list[int] = (2, 2, 6, 2),
) -> ModelBundle:
    """ConvNeXt (the Atto widths and depths by default) as ``ConvNextForImageClassification``."""
    _check_image(num_classes, image_size, channels)
    if len(hidden_sizes) != len(depths):
        raise ModelSpecError(
            f"hidden_sizes {list(hidden_sizes)} and depths {list(depths)} differ in length"
        )
    tf = _transformers()
    config = tf.ConvNextConfig(
        num_channels=channels,
        hidden_sizes=[int(h) for h in hidden_sizes],
        depths=[int(d) for d in depths],
        image_size=image_size,
        num_labels=num_classes,
    )
    return _image_bundle(
        tf.ConvNextForImageClassification(config), "hf_convnext", num_classes, image_size, channels
    )


@MODELS.register("hf_bert")
def hf_bert(
    vocab_size: int = 512,
    seq_len: int = 16,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    intermediate_size: int = 1024,
) -> ModelBundle:
    """A BERT encoder (``BertModel``) mean-pooled into a sentence embedding of ``hidden_size``.

    Inputs: token ids and attention mask, both int64 of shape (1, seq_len).
    """
    if hidden_size % heads:
        raise ModelSpecError(f"hidden_size {hidden_size} is not a multiple of heads {heads}")
    if vocab_size < 2 or seq_len < 2:
        raise ModelSpecError(f"vocab_size and seq_len must be >= 2, got {vocab_size}, {seq_len}")
    tf = _transformers()
    config = tf.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max(seq_len, 8),
        attn_implementation="eager",
    )
    model = tf.BertModel(config, add_pooling_layer=False)
    ids = torch.randint(1, vocab_size, (1, seq_len), dtype=torch.int64)
    mask = torch.ones(1, seq_len, dtype=torch.int64)
    mask[:, seq_len * 3 // 4 :] = 0
    return ModelBundle(
        module=MeanPooledEncoder(model).eval(),
        example_inputs=(ids, mask),
        name="hf_bert",
        task="embedding",
        num_classes=None,
        factory="builtin:hf_bert",
    )


__all__ = [
    "TRANSFORMERS_PIN",
    "ImageLogits",
    "MeanPooledEncoder",
    "hf_bert",
    "hf_convnext",
    "hf_efficientnet_b0",
    "hf_mobilenetv2",
    "hf_resnet18",
    "hf_vit",
]
