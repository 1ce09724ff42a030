"""Architectures nobody here wrote -- transformers' own ResNet, MobileNetV2, EfficientNet, ViT and
BERT classes, built offline from tiny configs -- go through structured pruning (heads and FFN
channels for attention models), low-rank, and export; the BERT encoder's candidates run on a real
agent with two integer inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.sentences import WordTokenizer, sentences
from host.compress import (
    ChannelPrune,
    FineTune,
    Fp16,
    Int8Dynamic,
    Int8Full,
    LowRank,
    Recipe,
    compress,
)
from host.compress.handlers.lowrank import factorize_module
from host.compress.handlers.pruning import find_attention_blocks, structured_prune
from host.data import DataSet, Split, split_arrays
from host.metrics import count_params
from host.models import ModelBundle, load_model

pytest.importorskip("transformers")

TINY = {
    "hf_resnet18": {"hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "image_size": 16},
    "hf_mobilenetv2": {"depth_multiplier": 0.35, "image_size": 16},
    "hf_efficientnet_b0": {"image_size": 32},
    "hf_vit": {"image_size": 16, "hidden_size": 32, "layers": 2, "heads": 4,
               "intermediate_size": 64},
}  # fmt: skip
SEQ_LEN = 12


@pytest.fixture(scope="session")
def sentence_data() -> tuple[DataSet, int]:
    texts, labels = sentences(per_topic=40)
    tokenizer = WordTokenizer(texts)
    ids, mask = tokenizer.encode(texts, SEQ_LEN)
    labelled = split_arrays("sentences", (ids, mask), np.asarray(labels), 0)
    unlabelled = DataSet(
        "sentences", *(Split(s.inputs) for s in (labelled.train, labelled.val, labelled.test))
    )
    return unlabelled, tokenizer.vocab_size


@pytest.fixture(scope="session")
def tiny_bert(sentence_data: tuple[DataSet, int]) -> ModelBundle:
    """A 2-layer BERT with hidden 32 (4 heads), mean-pooled over its attention mask."""
    _, vocab = sentence_data
    return load_model(
        "builtin:hf_bert", vocab_size=vocab, seq_len=SEQ_LEN, hidden_size=32, layers=2,
        heads=4, intermediate_size=64,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(TINY))
def test_transformers_image_models_build_offline_and_return_class_scores(name: str) -> None:
    bundle = load_model(f"builtin:{name}", **TINY[name])
    with torch.no_grad():
        out = bundle.module(*bundle.example_inputs)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10)
    assert bundle.task == "classification" and bundle.num_classes == 10


def test_bert_encoder_takes_two_integer_inputs_and_gives_a_mean_pooled_embedding(
    tiny_bert: ModelBundle,
) -> None:
    ids, mask = tiny_bert.example_inputs
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    with torch.no_grad():
        out = tiny_bert.module(ids, mask)
        # Padding does not change the embedding: the mean runs over real tokens only.
        padded = ids.clone()
        padded[mask == 0] = 3
        again = tiny_bert.module(padded, mask)
    assert out.shape == (1, 32) and tiny_bert.task == "embedding"
    torch.testing.assert_close(out, again)


def test_pruning_a_bert_encoder_removes_whole_heads_and_ffn_channels_keeping_its_width(
    tiny_bert: ModelBundle,
) -> None:
    outcome = structured_prune(tiny_bert.module, tiny_bert.example_inputs, ChannelPrune(0.5))
    assert outcome.heads == [(4, 2), (4, 2)]
    blocks = find_attention_blocks(outcome.model)
    assert [b.heads for b in blocks] == [2, 2]
    for block in blocks:
        assert all(layer.out_features == 2 * 8 for layer in block.qkv)  # head width 8 kept
        assert block.module.all_head_size == 16
    encoder = outcome.model.model.encoder
    assert all(layer.intermediate.dense.out_features == 32 for layer in encoder.layer)
    with torch.no_grad():
        assert outcome.model(*tiny_bert.example_inputs).shape == (1, 32)
    assert count_params(outcome.model) < 0.8 * count_params(tiny_bert.module)


def test_pruning_a_vit_keeps_whole_heads_and_its_class_count() -> None:
    bundle = load_model("builtin:hf_vit", **TINY["hf_vit"])
    outcome = structured_prune(bundle.module, bundle.example_inputs, ChannelPrune(0.5))
    assert outcome.heads == [(4, 2), (4, 2)]
    with torch.no_grad():
        assert outcome.model(*bundle.example_inputs).shape == (1, 10)


def test_transformers_efficientnet_gets_batch_norm_scales_of_one_so_it_can_train_from_scratch() -> (
    None
):
    """transformers draws them from N(0, 0.02): every sample then reached the head as the same
    vector, and the bench's EfficientNet-B0 ended its pretraining predicting one class."""
    bundle = load_model("builtin:hf_efficientnet_b0", **TINY["hf_efficientnet_b0"])
    norms = [m for m in bundle.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 40 and all(bool((m.weight == 1).all()) for m in norms)
    with torch.no_grad():
        logits = bundle.module.train()(torch.randn(8, 3, 32, 32))
    bundle.module.eval()
    assert float(logits.std(0).mean()) > 1e-3


@pytest.mark.parametrize("name", ["hf_resnet18", "hf_mobilenetv2", "hf_efficientnet_b0"])
def test_pruning_transformers_conv_nets_halves_channels_and_keeps_the_output(name: str) -> None:
    bundle = load_model(f"builtin:{name}", **TINY[name])
    outcome = structured_prune(bundle.module, bundle.example_inputs, ChannelPrune(0.5))
    assert outcome.heads == []
    assert count_params(outcome.model) < 0.5 * count_params(bundle.module)
    with torch.no_grad():
        assert outcome.model(*bundle.example_inputs).shape == (1, 10)


def test_lowrank_factorizes_the_linear_layers_of_a_bert_encoder(tiny_bert: ModelBundle) -> None:
    model, done, _ = factorize_module(
        tiny_bert.module, tiny_bert.example_inputs, LowRank(ratio=0.5, layers="linear")
    )
    assert len(done) >= 8  # q, k, v, attention output, FFN in and out of both layers
    assert all(f.params_after <= 0.5 * f.params_before for f in done)
    with torch.no_grad():
        assert model(*tiny_bert.example_inputs).shape == (1, 32)


@pytest.fixture(scope="module")
def encoder_candidates(
    tiny_bert: ModelBundle,
    sentence_data: tuple[DataSet, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list]:
    data, _ = sentence_data
    out = tmp_path_factory.mktemp("encoder")
    recipes = [
        Recipe.of(name="baseline"),
        Recipe.of(Fp16(), name="fp16"),
        Recipe.of(Int8Dynamic(), name="int8_dynamic"),
        Recipe.of(Int8Full(), name="int8"),  # linear layers int8, token ids and mask stay integers
        Recipe.of(ChannelPrune(0.5), FineTune(epochs=2, lr=1e-3), Int8Dynamic(), name="p50"),
        Recipe.of(LowRank(ratio=0.5), FineTune(epochs=2, lr=1e-3), name="lowrank"),
    ]
    return out, [compress(tiny_bert, data, r, out) for r in recipes]


def test_every_encoder_candidate_exports_with_two_integer_inputs_and_keeps_fidelity(
    encoder_candidates: tuple[Path, list],
) -> None:
    _, results = encoder_candidates
    for result in results:
        (artifact,) = result.artifacts
        inputs = artifact.manifest.inputs
        assert [t.dtype for t in inputs] == ["int32", "int32"], result.recipe.name
        assert [t.shape for t in inputs] == [[1, SEQ_LEN], [1, SEQ_LEN]]
        assert result.artifact_metrics[0]["metric"] == "cosine"
        assert result.artifact_metrics[0]["metric_value"] > 0.9, result.recipe.name
    pruned = next(r for r in results if r.recipe.name == "p50")
    assert any("kept 4 of 8 heads" in n for n in pruned.steps[0].notes)
    assert any("no labels" in n for n in pruned.steps[1].notes)


@pytest.mark.slow
def test_a_real_agent_runs_every_encoder_candidate_with_two_integer_inputs(
    encoder_candidates: tuple[Path, list], shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    from host.commands.bench import benchmark as run_benchmark
    from host.fleet import Fleet
    from host.store import Store
    from tests.agents import AgentProcess

    out, results = encoder_candidates
    agent = AgentProcess(shared_broker_url, "enc-board", tmp_path / "agent", base_topic)
    agent.start()
    try:
        agent.wait_online(timeout=60)
        store = Store(f"sqlite:///{tmp_path / 'host.db'}")
        with Fleet(shared_broker_url, base_topic, store=store) as fleet:
            fleet.wait_for_device("enc-board", 30)
            for result in results:
                artifact = result.artifacts[0]
                benchmark = run_benchmark(
                    fleet, "enc-board", artifact.path, model_manifest=artifact.manifest,
                    eval_path=out / "eval.npz", runs=3, min_s=0.05, timeout=120,
                )  # fmt: skip
                assert benchmark.eval_samples > 0, result.recipe.name
                assert benchmark.latency_ms.p50 > 0
    finally:
        agent.terminate()


def test_lowrank_on_a_vit_leaves_whole_the_layer_its_code_reads_and_the_model_still_runs() -> None:
    bundle = load_model("builtin:hf_vit", **TINY["hf_vit"])
    model, done, skipped = factorize_module(
        bundle.module, bundle.example_inputs, LowRank(ratio=0.5)
    )
    reasons = {s.name: s.reason for s in skipped}
    projection = "model.vit.embeddings.patch_embeddings.projection"
    assert "the model's code needs it as is" in reasons[projection]
    assert len(done) >= 8
    with torch.no_grad():
        assert model(*bundle.example_inputs).shape == (1, 10)


def _he_initialised_tiny_mobilenetv2() -> ModelBundle:
    torch.manual_seed(0)
    bundle = load_model("builtin:hf_mobilenetv2", **TINY["hf_mobilenetv2"])
    # transformers initialises convolutions with std 0.02: at 16 px the logits come out constant.
    # He initialisation gives outputs that differ from input to input, so fidelity means something.
    with torch.no_grad():
        for layer in bundle.module.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(layer.weight)
    return bundle


def _random_images(count: int) -> Split:
    rng = np.random.default_rng(0)
    return Split((rng.normal(size=(count, 3, 16, 16)).astype(np.float32),))


def test_full_int8_of_transformers_mobilenetv2_exports_through_its_tf_padding(
    tmp_path: Path,
) -> None:
    from host.export import ExportConfig, export, run_artifact
    from host.metrics import predict

    bundle = _he_initialised_tiny_mobilenetv2()
    calib = _random_images(32)
    artifact = export(
        bundle, None, ExportConfig("tflite", "int8", calibration_samples=32), tmp_path,
        calibration=calib,
    )  # fmt: skip
    assert artifact.manifest.inputs[0].dtype == "int8"
    quantized, reference = run_artifact(artifact.path, calib), predict(bundle.module, calib)
    assert quantized.shape == reference.shape == (32, 10)
    assert reference.std(axis=0).mean() > 0.05
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.95


def test_qat_of_transformers_mobilenetv2_folds_every_batch_norm_and_tracks_fp32(
    tmp_path: Path,
) -> None:
    """Its TF-style padding defeats torch.fx tracing; the batch norms are folded in the exported
    graph instead. Left unfolded, they stayed float between quantized ops and the QAT file scored
    33 points below PTQ int8 of the same model."""
    from host.compress.handlers.quantization import _batch_norms_left, prepare_qat
    from host.export import ExportConfig, QuantizedGraph, export, run_artifact
    from host.export.tflite import capture_with_free_batch
    from host.metrics import predict

    bundle = _he_initialised_tiny_mobilenetv2()
    captured = capture_with_free_batch(bundle.module.eval(), bundle.example_inputs)
    assert _batch_norms_left(captured) > 10  # what the exported graph computes before folding
    wrapped, quantizer, left = prepare_qat(bundle.module, bundle.example_inputs)
    assert left == 0
    calib = _random_images(32)
    wrapped.calibrate([(torch.from_numpy(calib.inputs[0]),)])
    artifact = export(
        bundle, None, ExportConfig("tflite", "qat_int8"), tmp_path,
        quantizer_state=QuantizedGraph(graph_module=wrapped.graph_module, quantizer=quantizer),
    )  # fmt: skip
    assert artifact.manifest.inputs[0].dtype == "int8"
    quantized, reference = run_artifact(artifact.path, calib), predict(bundle.module, calib)
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.95


def test_lowrank_factorizes_transformers_mobilenetv2_whose_padding_reads_its_convolutions() -> None:
    """Its TF-style padding reads each convolution's stride and kernel size: the factorized layer
    keeps them, so every 1x1 convolution is factorized (depthwise ones and the head are not)."""
    bundle = _he_initialised_tiny_mobilenetv2()
    model, done, skipped = factorize_module(
        bundle.module, bundle.example_inputs, LowRank(ratio=0.5)
    )
    assert len(done) > 20
    assert {s.reason.split(" (")[0] for s in skipped} <= {
        "grouped/depthwise conv", "output head"
    }  # fmt: skip
    original = dict(bundle.module.named_modules())
    replaced = dict(model.named_modules())
    for layer in done:
        for attribute in ("stride", "kernel_size", "dilation", "in_channels", "out_channels"):
            assert getattr(replaced[layer.name], attribute) == getattr(
                original[layer.name], attribute
            )
    images = torch.from_numpy(_random_images(8).inputs[0])
    with torch.no_grad():
        assert model(images).shape == (8, 10)


def test_a_width_less_vit_student_narrows_its_residual_width_to_half_the_parameters() -> None:
    from host.compress.handlers.training import build_student

    teacher = load_model("builtin:hf_vit", **TINY["hf_vit"])
    student, how = build_student(teacher, 0.5)
    assert count_params(student.module) <= 0.5 * count_params(teacher.module)
    embeddings = student.module.model.vit.embeddings
    assert embeddings.cls_token.shape[-1] < TINY["hf_vit"]["hidden_size"]
    assert embeddings.position_embeddings.shape[-1] == embeddings.cls_token.shape[-1]
    with torch.no_grad():
        assert student.module(*teacher.example_inputs).shape == (1, 10)
    assert "structurally pruned" in how


def test_a_width_less_encoder_student_keeps_its_embedding_width(tiny_bert: ModelBundle) -> None:
    from host.compress.handlers.training import build_student

    student, _ = build_student(tiny_bert, 0.5)
    assert count_params(student.module) < count_params(tiny_bert.module)
    with torch.no_grad():
        assert student.module(*tiny_bert.example_inputs).shape == (1, 32)
