"""Every named recipe on real architectures nobody here wrote, measured on the host and on a real agent.

    python -m bench.models [--quick] [--out bench/results/models.json] [--models resnet18,bert]
                           [--recipes baseline,int8] [--merge a.json b.json]

Architectures come from Hugging Face transformers' own model classes, built offline from their
configs (``host.models.hf``): ResNet-18, MobileNetV2, EfficientNet-B0, a ViT, ConvNeXt, and a BERT
encoder mean-pooled into a sentence embedding over its attention mask; and from width-less
factories written as users write them (``tests.taskmodels``): a GRU and a stacked bidirectional
LSTM classifying the digits' 8 rows as sequences, a conv net with two outputs (class scores and
the ink's bounding box, trained on both target arrays y0/y1), and an MLP regressor of
scikit-learn's diabetes set with real-valued labels. Each is first trained briefly on real data
that ships: scikit-learn's digits (upsampled to 3x32x32 for the transformers vision models) and
diabetes, and for the encoder the few hundred sentences of ``bench.sentences`` (fine-tuned on
their topic through a linear head that is then dropped).

Compression runs **without labels** on the training and validation splits, so every recovery step
(fine-tune, QAT, distillation) has only the uncompressed model's outputs to learn from; the vision
test split keeps its labels, so the host metric is test accuracy of the exported file (of its first
output for the two-output net; r2 against the labels for the regressor); the encoder is scored by
cosine similarity to the uncompressed model's embeddings. A distilled student's row says how it
compares with the pruned fine-tune of the same precision, and when it is no better. Each row: file size
ratio to the fp32 baseline, MACs, host metric with its 95% interval, and the metric and latency a
real agent (a subprocess on a private Mosquitto, benchmarking through ``host.commands.bench``)
measured; a recipe that fails says why.

``--quick`` (``make bench``): smaller configs of the same classes, a fifth of the epochs and five
recipes, a few minutes in all. The full run makes the table in docs/benchmarks.md. ``--int8-only``: fp32, full
int8 and dynamic int8 of two conv nets at 128 px, with the ops of each file that keep a float
input; the report names the CPU, since int8 speed-ups depend on its int8 dot-product instructions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.goals import GoalRow

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/models.json")
QUICK_RECIPES = ("baseline", "int8_dynamic", "int8", "prune50_ft", "distill_half")
SEQ_LEN = 16
SENTENCES_PER_TOPIC = 180


@dataclass(frozen=True)
class Arch:
    """One architecture of the table: how to build it (full and quick) and how to pretrain it."""

    key: str
    spec: str
    quick_params: dict[str, Any]
    data: str  # a key of DATA: "vision", "text", "rows", "boxes" or "diabetes"
    epochs: int
    lr: float
    params: dict[str, Any] = field(default_factory=dict)


ARCHS: tuple[Arch, ...] = (
    Arch(
        "resnet18",
        "builtin:hf_resnet18",
        {"hidden_sizes": [16, 32, 64, 128]},
        "vision",
        epochs=3,
        lr=1e-3,
    ),
    Arch("mobilenetv2", "builtin:hf_mobilenetv2", {"depth_multiplier": 0.35}, "vision", 8, 3e-3),
    Arch("efficientnet_b0", "builtin:hf_efficientnet_b0", {}, "vision", 8, 3e-3),
    Arch(
        "vit",
        "builtin:hf_vit",
        {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128},
        "vision",
        epochs=20,
        lr=1e-3,
        params={"hidden_size": 128, "layers": 4, "heads": 4, "intermediate_size": 512},
    ),
    Arch(
        "bert",
        "builtin:hf_bert",
        {"hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 128},
        "text",
        epochs=6,
        lr=1e-3,
    ),
    # Models of the kinds users bring beyond image classifiers and encoders: transformers'
    # ConvNeXt, recurrent sequence classifiers, a net with two outputs, a regressor with real
    # labels. The last four are width-less factories written as a user writes them.
    Arch(
        "convnext",
        "builtin:hf_convnext",
        {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1]},
        "vision",
        epochs=10,
        lr=2e-3,
        params={"hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 3, 1]},
    ),
    Arch(
        "gru",
        "tests.taskmodels:gru_classifier",
        {"hidden": 64},
        "rows",
        20,
        3e-3,
        params={"hidden": 128},
    ),
    Arch("lstm", "tests.taskmodels:lstm_classifier", {"hidden": 32}, "rows", 20, 3e-3),
    Arch("two_outputs", "tests.taskmodels:two_head_net", {}, "boxes", 8, 3e-3),
    Arch("mlp_regressor", "tests.taskmodels:mlp_regressor", {}, "diabetes", 20, 3e-3),
)

# What each named recipe must reach (see docs/benchmarks.md): quantization within 1 point of fp32 (cosine
# >= 0.99 for the encoder), pruning and low-rank with label-free recovery within 2 points (cosine
# >= 0.97), distilled students at least 2x smaller than their teacher.
QUANT_GOAL = ("fp16", "int8_dynamic", "int8", "qat")
RECOVERY_GOAL = ("prune50_ft", "lowrank_ft")


# ------------------------------------------------------------------ data


def digits_rgb32(seed: int = 0, size: int = 32) -> Any:
    """scikit-learn's digits, bilinearly upsampled to ``size`` px and repeated over 3 channels."""
    import torch
    import torch.nn.functional as F

    from host.data import DataSet, Split, load_data

    digits = load_data("builtin:digits", seed=seed)

    def up(split: Split) -> Split:
        x = torch.from_numpy(split.inputs[0]).float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return Split((x.repeat(1, 3, 1, 1).numpy(),), split.labels)

    return DataSet("digits-rgb32", up(digits.train), up(digits.val), up(digits.test))


def sentence_data(seed: int = 0, seq_len: int = SEQ_LEN) -> tuple[Any, int]:
    """The bench sentences as (ids, mask) splits with topic labels, and the vocabulary size.

    720 sentences, so that the 15% test split the encoder is scored on holds 108 of them: a
    smaller eval set is flagged as untrustworthy (fewer than 100 samples), by the bench as by
    every other run.
    """
    from bench.sentences import WordTokenizer, sentences
    from host.data import split_arrays

    texts, labels = sentences(per_topic=SENTENCES_PER_TOPIC, seed=seed)
    tokenizer = WordTokenizer(texts)
    ids, mask = tokenizer.encode(texts, seq_len)
    data = split_arrays("sentences", (ids, mask), np.asarray(labels, dtype=np.int64), seed)
    return data, tokenizer.vocab_size


# Data of the architectures besides images and sentences, as a user's data factory gives it.
FACTORY_DATA = {
    "rows": "tests.taskmodels:digit_rows",
    "boxes": "tests.taskmodels:digits_with_boxes",
    "diabetes": "tests.taskmodels:diabetes",
}


def arch_data(arch: Arch) -> tuple[Any, int]:
    """The labelled data an architecture is trained and scored on, and the vocabulary size."""
    from host.data import load_data

    if arch.data == "vision":
        return digits_rgb32(), 0
    if arch.data == "text":
        return sentence_data()
    return load_data(FACTORY_DATA[arch.data]), 0


def without_training_labels(data: Any) -> Any:
    """Train and validation splits without labels (recovery must do without); test unchanged."""
    from host.data import DataSet, Split

    return DataSet(
        f"{data.name}-unlabelled", Split(data.train.inputs), Split(data.val.inputs), data.test
    )  # the test split keeps every target array (y0, y1, ...)


def without_labels(data: Any) -> Any:
    from host.data import DataSet, Split

    return DataSet(
        f"{data.name}-unlabelled",
        Split(data.train.inputs),
        Split(data.val.inputs),
        Split(data.test.inputs),
    )


# ------------------------------------------------------------------ models


def build(arch: Arch, quick: bool, vocab_size: int) -> Any:
    from host.models import load_model

    params = dict(arch.quick_params if quick else arch.params)
    if arch.data == "text":
        params.update(vocab_size=vocab_size, seq_len=SEQ_LEN)
    return load_model(arch.spec, **params)


def pretrain(arch: Arch, bundle: Any, data: Any, epochs: int, seed: int = 0) -> Any:
    """Train the fresh model on labelled data; the encoder through a topic head it then drops."""
    import torch
    from torch import nn

    from host.compress.api import prepare_baseline
    from host.train import fit

    if arch.data != "text":
        return prepare_baseline(bundle, data, epochs=epochs, lr=arch.lr, seed=seed)

    class TopicHead(nn.Module):
        def __init__(self, encoder: nn.Module, dim: int, classes: int) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = nn.Linear(dim, classes)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(ids, mask))

    with torch.no_grad():
        dim = int(bundle.module(*bundle.example_inputs).shape[-1])
    classifier = TopicHead(bundle.module, dim, int(data.num_classes or 2))
    fit(classifier, data, epochs, arch.lr, seed=seed, task="classification")
    return dataclasses.replace(bundle, module=classifier.encoder.cpu().eval())


# ------------------------------------------------------------------ the agent


@contextmanager
def real_agent(workdir: Path) -> Iterator[tuple[Any, str]]:
    """A private Mosquitto, one agent subprocess (1 thread) on it, and a Fleet talking to it."""
    from host.fleet import Fleet
    from host.store import Store
    from tests.agents import AgentProcess
    from tests.brokers import MosquittoProcess, free_port

    broker = MosquittoProcess(workdir / "mosquitto", port=free_port())
    broker.start()
    base = f"etbench-{uuid.uuid4().hex[:8]}"
    device = "bench-board"
    agent = AgentProcess(
        broker.url, device, workdir / "agent", base, ["--threads", "1"], python=sys.executable
    )
    try:
        agent.start()
        agent.wait_online(timeout=120)
        with (
            Store(f"sqlite:///{workdir / 'host.db'}") as store,
            Fleet(broker.url, base, store=store) as fleet,
        ):
            yield fleet, device
    finally:
        agent.terminate(timeout=15)
        broker.stop()


def board_measure(
    fleet: Any, device: str, artifact: Any, eval_path: Path, runs: int, task: str | None = None
) -> dict[str, Any]:
    """Benchmark one file on the agent; ``task`` travels in the job, so the agent scores the same
    metric (shared.scoring) as the host did for the same file."""
    from host.commands.bench import benchmark
    from shared.errors import EdgeTailorError

    try:
        fleet.wait_for_device(device, 60)
        result = benchmark(
            fleet,
            device,
            artifact.path,
            model_manifest=artifact.manifest,
            eval_path=eval_path,
            threads=1,
            runs=runs,
            min_s=0.5,
            timeout_s=600,
            task=task,
            timeout=900,
        )
    except EdgeTailorError as exc:
        return {"error": str(exc)[:300]}
    return {
        "metric": result.metric,
        "metric_value": result.metric_value,
        "metric_interval": result.metric_interval,
        "task": result.task,
        "p50_ms": result.latency_ms.p50,
        "peak_rss_mb": result.peak_rss_mb,
        "runtime": result.runtime,
    }


# ------------------------------------------------------------------ recipes


def bench_recipes(quick: bool, names: list[str] | None, epoch_scale: float) -> list[Any]:
    from host.compress import NAMED_RECIPES

    chosen = names or list(QUICK_RECIPES if quick else NAMED_RECIPES)
    recipes = [NAMED_RECIPES.get(n) for n in chosen]
    if epoch_scale != 1.0:
        recipes = [_scaled(r, epoch_scale) for r in recipes]
    if recipes and recipes[0].name != "baseline":
        recipes.insert(0, NAMED_RECIPES.get("baseline"))
    return recipes


def _scaled(recipe: Any, scale: float) -> Any:
    steps = tuple(
        dataclasses.replace(s, epochs=max(1, round(s.epochs * scale)))
        if hasattr(s, "epochs")
        else s
        for s in recipe.steps
    )
    return dataclasses.replace(recipe, steps=steps)


def _sparsity(module: Any) -> float:
    from host.compress.handlers.pruning import sparsity

    return round(sparsity(module), 4)


def goal_of(recipe: str, task: str) -> tuple[str, Callable[[dict[str, Any], dict[str, Any]], bool]]:
    """(goal in words, check(row, baseline_row)) for a recipe; an empty goal checks nothing."""
    unit = "r2" if task == "regression" else "point"
    if recipe in QUANT_GOAL:
        if task == "embedding":
            return "cosine >= 0.99", lambda r, b: r["host_metric"] >= 0.99
        within = "within 0.01 r2" if unit == "r2" else "within 1 point"
        return within, lambda r, b: r["host_metric"] >= b["host_metric"] - 0.01
    if recipe in RECOVERY_GOAL:
        if task == "embedding":
            return "cosine >= 0.97", lambda r, b: r["host_metric"] >= 0.97
        within = "within 0.02 r2" if unit == "r2" else "within 2 points"
        return within, lambda r, b: r["host_metric"] >= b["host_metric"] - 0.02
    if recipe.startswith("distill"):
        return ">= 2x fewer params", lambda r, b: b["params"] >= 2 * r["params"]
    return "", lambda r, b: True


def changed_anything(row: dict[str, Any], base: dict[str, Any]) -> bool:
    """Whether the candidate differs from the baseline in what its recipe claims to change."""
    return (
        row["precision"] != base["precision"]
        or row["params"] != base["params"]
        or (row.get("macs") or 0) != (base.get("macs") or 0)
        or row["sparsity"] > base["sparsity"] + 0.05
        or row["recipe"] == "baseline"
    )


# ------------------------------------------------------------------ one architecture


# A distilled student is compared with the pruned fine-tune of the same precision: where it is the
# same size and no better, the table says so instead of showing what reads as a second recipe.
DISTILL_PEERS = {"distill_half": "prune50_ft", "distill_half_int8": "prune50_ft_int8"}


def compare_with_pruning(rows: list[dict[str, Any]]) -> None:
    """``vs_pruned`` (metric difference) on each distilled row whose pruned peer ran, in place,
    and ``no_better_than_pruned`` where the student is that peer's size and scores no higher."""
    by_recipe = {row["recipe"]: row for row in rows if "error" not in row}
    for recipe, peer_name in DISTILL_PEERS.items():
        row, peer = by_recipe.get(recipe), by_recipe.get(peer_name)
        if row is None or peer is None:
            continue
        row["vs_pruned"] = row["host_metric"] - peer["host_metric"]
        row["no_better_than_pruned"] = (
            row["params"] >= peer["params"] and row["host_metric"] <= peer["host_metric"]
        )


def finish_rows(rows: list[dict[str, Any]], task: str) -> None:
    """Ratios to the baseline (the first row), goals, the changed-anything check and distillation
    against pruning, in place."""
    base = rows[0]
    for row in rows:
        if "error" in row or "error" in base:
            continue
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["params_ratio"] = base["params"] / row["params"]
        row["macs_ratio"] = base["macs"] / row["macs"] if row.get("macs") else None
        board, base_board = row["board"], base["board"]
        if "p50_ms" in board and "p50_ms" in base_board and board["p50_ms"]:
            row["board_speedup"] = base_board["p50_ms"] / board["p50_ms"]
        goal, check = goal_of(row["recipe"], task)
        row["goal"] = goal
        row["goal_met"] = bool(check(row, base)) if goal else None
        row["changed"] = changed_anything(row, base)
    compare_with_pruning(rows)


def run_arch(
    arch: Arch,
    recipes: list[Any],
    quick: bool,
    compact: bool,
    fleet: Any,
    device: str,
    workdir: Path,
    runs: int,
    log: Callable[[str], None],
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    from host.compress import compress
    from host.metrics import count_params
    from shared.errors import EdgeTailorError

    labelled, vocab = arch_data(arch)
    bundle = build(arch, compact, vocab)
    epochs = max(1, round(arch.epochs * (0.2 if quick else 1.0)))
    started = time.perf_counter()
    teacher = pretrain(arch, bundle, labelled, epochs)
    pretrain_s = time.perf_counter() - started
    data = without_labels(labelled) if arch.data == "text" else without_training_labels(labelled)
    out = workdir / arch.key
    rows: list[dict[str, Any]] = []
    for recipe in recipes:
        log(f"{arch.key}: {recipe.name}")
        t0 = time.perf_counter()
        row: dict[str, Any] = {"recipe": recipe.name, "description": recipe.describe()}
        try:
            result = compress(teacher, data, recipe, out)
        except EdgeTailorError as exc:
            row.update(error=f"{type(exc).__name__}: {exc}"[:400])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            log(f"  failed: {row['error'][:160]}")
            continue
        artifact = result.artifacts[0]
        entry = result.artifact_metrics[0]
        # The host's own score of the exported file (host.metrics, i.e. shared.scoring): the same
        # functions and intervals the agent scores with.
        interval = tuple(entry["metric_interval"])
        row.update(
            precision=artifact.manifest.precision,
            params=count_params(result.bundle.module),
            macs=result.metrics.get("macs"),
            size_bytes=artifact.manifest.size_bytes,
            sparsity=_sparsity(result.bundle.module),
            host_metric_name=entry["metric"],
            host_metric=entry["metric_value"],
            host_interval=interval,
            notes=[n for s in result.steps for n in s.notes],
        )
        row["board"] = board_measure(
            fleet, device, artifact, out / "eval.npz", runs, task=teacher.task
        )
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if checkpoint is not None:
            checkpoint({"arch": arch.key, "partial": True, "task": teacher.task, "rows": rows})
        log(
            f"  {row['host_metric_name']} {row['host_metric']:.4f} "
            f"[{interval[0]:.3f}, {interval[1]:.3f}] board {row['board']}"
        )
    finish_rows(rows, teacher.task)
    return {
        "arch": arch.key,
        "spec": arch.spec,
        "params": dict(arch.quick_params if compact else arch.params),
        "task": teacher.task,
        "data": labelled.name,
        "pretrain_epochs": epochs,
        "pretrain_seconds": round(pretrain_s, 1),
        "rows": rows,
    }


def merge_reports(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine runs: a model seen again takes the later run's rows for the recipes it reran (each
    keeps the ratios to its own run's baseline and names its run); other models are appended."""
    merged: dict[str, Any] = {**parts[0], "archs": []}
    by_key: dict[str, dict[str, Any]] = {}
    for part in parts:
        for arch in part["archs"]:
            if arch.get("partial"):
                finish_rows(arch["rows"], arch["task"])
            known = by_key.get(arch["arch"])
            if known is None:
                arch = {**arch, "rows": list(arch["rows"])}
                by_key[arch["arch"]] = arch
                merged["archs"].append(arch)
                continue
            index = {row["recipe"]: i for i, row in enumerate(known["rows"])}
            for row in arch["rows"]:
                if row["recipe"] == "baseline":
                    continue
                row = {**row, "run": part.get("command", "")}
                if row["recipe"] in index:
                    known["rows"][index[row["recipe"]]] = row
                else:
                    known["rows"].append(row)
    merged["seconds"] = round(sum(p.get("seconds", 0) for p in parts), 1)
    merged["command"] = "; ".join(p["command"] for p in parts if "command" in p)
    return merged


def tflite_ops(path: Path) -> dict[str, Any]:
    """Op counts of a .tflite file by (op, input dtypes), the ops with a float input, and the bytes
    of its quantization parameters (a float32 scale and an int64 zero point per channel)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops: dict[str, int] = {}
    float_ops: dict[str, int] = {}
    # A private but stable accessor: the public API lists tensors, not operators.
    for op in interpreter._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        dtypes = sorted(
            {np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i >= 0 and i in tensors}
        )
        key = f"{op['op_name']}({','.join(dtypes)})"
        ops[key] = ops.get(key, 0) + 1
        if "float32" in dtypes:
            float_ops[op["op_name"]] = float_ops.get(op["op_name"], 0) + 1
    quant_bytes = 0
    for t in tensors.values():
        q = t.get("quantization_parameters") or {}
        quant_bytes += 4 * len(q.get("scales", [])) + 8 * len(q.get("zero_points", []))
    return {"ops": ops, "float_ops": float_ops, "quant_param_bytes": quant_bytes}


# The conv nets of the int8 investigation, at an input size a board would see.
INT8_NETS = (
    ("mobilenetv2", "builtin:mobilenetv2", {"input_shape": (3, 128, 128)}),
    ("efficientnet_b0", "builtin:hf_efficientnet_b0", {"image_size": 128}),
)


def int8_investigation(fleet: Any, device: str, workdir: Path, runs: int) -> list[dict[str, Any]]:
    """Conv nets at 128 px (the zoo's MobileNetV2, transformers' EfficientNet-B0) in fp32, full
    int8 and dynamic int8: size, which ops keep a float input, quantization-parameter bytes, host
    and agent latency (1 thread). Untrained weights: size, op kinds and speed do not depend on
    them."""
    from host.data import Split, write_eval_npz
    from host.export import ExportConfig, export, measure_latency
    from host.models import load_model

    sections = []
    for key, spec, params in INT8_NETS:
        bundle = load_model(spec, **params)
        shape = tuple(bundle.example_inputs[0].shape[1:])
        rng = np.random.default_rng(0)
        calib = Split((rng.normal(size=(64, *shape)).astype(np.float32),))
        out = workdir / f"{key}-128"
        eval_npz = write_eval_npz(calib.subset(8), out / "eval.npz")
        rows = {}
        for precision in ("fp32", "int8", "int8_dynamic"):
            artifact = export(
                bundle, None, ExportConfig(precision=precision, calibration_samples=64), out,
                calibration=calib,
            )  # fmt: skip
            host = measure_latency(artifact.path, calib, threads=1, runs=100)
            board = board_measure(fleet, device, artifact, eval_npz, runs)
            rows[precision] = {
                "size_bytes": artifact.manifest.size_bytes,
                "host_p50_ms": host["p50_ms"],
                "board_p50_ms": board.get("p50_ms"),
                **tflite_ops(artifact.path),
            }
        base = rows["fp32"]
        for row in rows.values():
            row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
            row["host_speedup"] = base["host_p50_ms"] / row["host_p50_ms"]
            if row["board_p50_ms"] and base["board_p50_ms"]:
                row["board_speedup"] = base["board_p50_ms"] / row["board_p50_ms"]
        sections.append({"model": key, "spec": spec, "params": params, "rows": rows})
    return sections


def cpu_facts() -> dict[str, Any]:
    """The CPU's name and its int8 dot-product extensions: int8 speed-ups depend on them."""
    facts: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            facts["model"] = value.strip()
        elif key.strip() in ("flags", "Features"):
            flags = set(value.split())
            facts["int8_dot_product"] = sorted(
                flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
            )
            break
    return facts


def run_bench(out: Path | None = DEFAULT_OUT, **options: Any) -> dict[str, Any]:
    """Train, compress and measure (see the module's docstring); torch on 2 threads meanwhile.

    The thread count is put back afterwards: a caller's later training (a test suite's) must not
    run with other numerics because a bench ran before it.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        return _run_bench(out, **options)
    finally:
        torch.set_num_threads(threads)


def _run_bench(
    out: Path | None = DEFAULT_OUT,
    *,
    quick: bool = False,
    models: list[str] | None = None,
    recipe_names: list[str] | None = None,
    runs: int = 30,
    compact: bool | None = None,
    epoch_scale: float | None = None,
    int8_report: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    import torch
    import transformers

    archs = [a for a in ARCHS if models is None or a.key in models]
    compact = quick if compact is None else compact
    epoch_scale = (0.2 if quick else 1.0) if epoch_scale is None else epoch_scale
    recipes = bench_recipes(quick, recipe_names, epoch_scale)
    started = time.perf_counter()
    results = []
    int8 = None
    with tempfile.TemporaryDirectory() as tmp, real_agent(Path(tmp)) as (fleet, device):
        if int8_report:
            log("int8 investigation: conv nets at 128 px")
            int8 = int8_investigation(fleet, device, Path(tmp), runs)
        for arch in archs:

            def checkpoint(partial: dict[str, Any]) -> None:
                # A long run that is stopped still leaves the rows it measured.
                if out is not None:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.with_suffix(".partial.json").write_text(
                        json.dumps({"archs": [*results, partial]}, indent=2, default=str)
                    )

            results.append(
                run_arch(
                    arch, recipes, quick, compact, fleet, device, Path(tmp), runs, log, checkpoint
                )
            )
    report = {
        "command": "python -m bench.models"
        + (" --quick" if quick else "")
        + (" --compact" if compact and not quick else "")
        + (f" --epoch-scale {epoch_scale:g}" if epoch_scale != (0.2 if quick else 1.0) else "")
        + (
            " --int8-only"
            if models == ["none"]
            else (f" --models {','.join(models)}" if models else "")
        )
        + (f" --recipes {','.join(recipe_names)}" if recipe_names else ""),
        "quick": quick,
        "compact_configs": compact,
        "recipe_epoch_scale": epoch_scale,
        "host": {
            "machine": platform.machine(),
            "cpu": cpu_facts(),
            "threads": "host 1 (latency), agent 1",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "board": "edgetailor-agent subprocess on this machine, 1 thread, private Mosquitto",
        "compression_data": "train/val without labels: recovery learns from the uncompressed model",
        "seconds": round(time.perf_counter() - started, 1),
        "archs": results,
    }
    if int8 is not None:
        report["int8_conv_nets_128"] = int8
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
    return report


# ------------------------------------------------------------------ output


def _fmt_metric(row: dict[str, Any]) -> str:
    lo, hi = row["host_interval"]
    return f"{row['host_metric_name']} {row['host_metric']:.3f} [{lo:.3f}, {hi:.3f}]"


def _fmt_board(row: dict[str, Any]) -> tuple[str, str]:
    board = row.get("board") or {}
    if "error" in board:
        return f"error: {board['error'][:60]}", "-"
    value = board.get("metric_value")
    metric = "-" if value is None else f"{board.get('metric')} {value:.3f}"
    return metric, "-" if board.get("p50_ms") is None else f"{board['p50_ms']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        (
            "| model | recipe | precision | params | MACs | file smaller | host metric [95% interval]"
            " | board metric | board p50 ms | board speed-up | goal |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    for arch in report["archs"]:
        for row in arch["rows"]:
            if "error" in row:
                reason = row["error"].replace("|", "/")[:140]
                lines.append(f"| {arch['arch']} | {row['recipe']} | failed: {reason} |||||||||")
                continue
            board_metric, p50 = _fmt_board(row)
            goal = row.get("goal") or ""
            if goal:
                goal = f"{goal}: {'met' if row.get('goal_met') else '**missed**'}"
            if row.get("changed") is False:
                goal = (goal + "; " if goal else "") + "**changed nothing**"
            if "vs_pruned" in row:
                peer = DISTILL_PEERS[row["recipe"]]
                versus = (
                    f"no better than {peer} ({row['vs_pruned']:+.3f})"
                    if row.get("no_better_than_pruned")
                    else f"{row['vs_pruned']:+.3f} vs {peer}"
                )
                goal = (goal + "; " if goal else "") + versus
            speed = row.get("board_speedup")
            lines.append(
                f"| {arch['arch']} | {row['recipe']} | {row['precision']} | {row['params']:,} | "
                f"{row['macs'] or 0:,} | {row.get('size_ratio', 1.0):.2f}x | {_fmt_metric(row)} | "
                f"{board_metric} | {p50} | {'-' if speed is None else f'{speed:.2f}x'} | {goal} |"
            )
    return "\n".join(lines)


def int8_markdown(sections: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| model | precision | file bytes | smaller | quant. params bytes | ops with a float input"
            " | host p50 ms | speed-up | agent p50 ms | speed-up |"
        ),
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for section in sections:
        for name, row in section["rows"].items():
            floats = ", ".join(f"{k} x{v}" for k, v in sorted(row["float_ops"].items())) or "none"
            board = row.get("board_p50_ms")
            lines.append(
                f"| {section['model']} | {name} | {row['size_bytes']:,} | {row['size_ratio']:.2f}x | "
                f"{row['quant_param_bytes']:,} | {floats} | {row['host_p50_ms']:.3f} | "
                f"{row['host_speedup']:.2f}x | {'-' if board is None else f'{board:.3f}'} | "
                f"{row.get('board_speedup', 0):.2f}x |"
            )
    return "\n".join(lines)


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    """Every recipe with a goal, and every recipe that changed nothing, for ``make bench``."""
    rows: list[GoalRow] = []
    for arch in report["archs"]:
        for row in arch["rows"]:
            name = f"{arch['arch']} {row['recipe']}"
            if "error" in row:
                rows.append(GoalRow("models", name, f"failed: {row['error'][:60]}", "", None))
                continue
            if row.get("goal"):
                rows.append(
                    GoalRow(
                        "models",
                        name,
                        f"{_fmt_metric(row)}; file {row.get('size_ratio') or 0:.2f}x smaller, "
                        f"{row.get('params_ratio') or 0:.2f}x fewer params",
                        row["goal"],
                        bool(row.get("goal_met")),
                    )
                )
            if row.get("changed") is False:
                rows.append(GoalRow("models", name, "changed nothing", "changes something", False))
    return rows


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="small configs, 5 recipes (minutes)")
    parser.add_argument("--models", help="comma list of: " + ",".join(a.key for a in ARCHS))
    parser.add_argument("--recipes", help="comma list of named recipes (baseline always runs)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per board benchmark")
    parser.add_argument(
        "--compact", action="store_true", help="the smaller configs of --quick with every recipe"
    )
    parser.add_argument(
        "--epoch-scale",
        type=float,
        help="multiply the named recipes' epochs (default 1; quick 0.2)",
    )
    parser.add_argument(
        "--int8-only",
        action="store_true",
        help="only the int8 investigation of conv nets at 128 px",
    )
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="combine per-model JSON files into --out and print"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = merge_reports(parts)
        for part in parts:
            if "int8_conv_nets_128" in part:
                merged["int8_conv_nets_128"] = part["int8_conv_nets_128"]
        args.out.write_text(json.dumps(merged, indent=2, default=str))
        print(markdown(merged))
        if "int8_conv_nets_128" in merged:
            print(int8_markdown(merged["int8_conv_nets_128"]))
        return
    console = Console(stderr=True)
    report = run_bench(
        args.out,
        quick=args.quick,
        models=["none"] if args.int8_only else (args.models.split(",") if args.models else None),
        recipe_names=args.recipes.split(",") if args.recipes else None,
        runs=args.runs,
        compact=True if args.compact else None,
        epoch_scale=args.epoch_scale,
        int8_report=args.int8_only or not (args.models or args.quick),
        log=lambda text: console.log(text),
    )
    print(markdown(report))
    if "int8_conv_nets_128" in report:
        print(int8_markdown(report["int8_conv_nets_128"]))
    console.print(f"{report['seconds']} s; written to {args.out}")


if __name__ == "__main__":
    main()
