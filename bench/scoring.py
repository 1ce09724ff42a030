"""What the scoring choices change, measured side by side in one run on exported files:

1. a label-free sentence encoder (token ids + attention mask, 384-d output) quantized to dynamic
   int8, scored against the fp32 model on the same sentences by top-1 agreement over its embedding
   dimensions (what a classifier's fidelity would be) and by cosine similarity (its task's metric);
2. the digits CNN in full int8 against its fp32 baseline: the 95% interval of the accuracy drop
   taken unpaired (two Wilson intervals) and paired over the same eval samples.

    python -m bench.scoring [--out bench/results/scoring.json] [--sentences 1000]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench/results/scoring.json")
logger = logging.getLogger(__name__)


def encoder_fidelity(sentences: int, work: Path) -> dict[str, Any]:
    import torch

    from host.compress import Int8Dynamic, Recipe, compress
    from host.data import split_arrays
    from host.export import run_artifact
    from host.metrics import predict
    from host.models import ModelBundle
    from shared import scoring
    from tests.taskmodels import MaskedEncoder, _token_examples
    from tests.taskmodels import sentences as make_sentences

    torch.manual_seed(0)
    module = MaskedEncoder(out=384).eval()
    arrays = make_sentences(0, n=sentences)
    data = split_arrays("sentences", (arrays["x0"], arrays["x1"]), None, seed=0)
    bundle = ModelBundle(module, _token_examples(), "encoder384", "embedding", None, "bench")
    result = compress(bundle, data, Recipe.of(Int8Dynamic()), work, eval_samples=None)
    reference = predict(module, data.test)
    outputs = run_artifact(result.artifacts[0].path, data.test)
    agreement = scoring.score(outputs, None, reference, "classification")
    cosine = scoring.score(outputs, None, reference, "embedding")
    return {
        "model": "token ids + mask -> 384-d embedding, dynamic int8 vs fp32",
        "eval_samples": len(data.test),
        "top1_agreement": [agreement.value, agreement.low, agreement.high],
        "cosine": [cosine.value, cosine.low, cosine.high],
    }


def paired_drop(work: Path) -> dict[str, Any]:
    from host.compress import Int8Full, Recipe, compress
    from host.data import load_data
    from host.export import run_artifact
    from host.metrics import predict
    from host.models import load_model
    from host.train import fit
    from shared import scoring

    data = load_data("builtin:digits")
    bundle = load_model("builtin:digits_cnn")
    fit(bundle.module, data, epochs=15, lr=3e-3, seed=0)
    bundle.module.cpu().eval()
    result = compress(bundle, data, Recipe.of(Int8Full()), work)
    base = scoring.score(
        predict(bundle.module, data.test), data.test.labels, None, "classification"
    )
    cand_out = run_artifact(result.artifacts[0].path, data.test)
    cand = scoring.score(cand_out, data.test.labels, None, "classification")
    unpaired = (base.low - cand.high, base.high - cand.low)
    paired = scoring.paired_drop_interval(base.per_sample or [], cand.per_sample or [])
    return {
        "model": "digits CNN, full int8 vs fp32, 270 test digits",
        "baseline_accuracy": [base.value, base.low, base.high],
        "int8_accuracy": [cand.value, cand.low, cand.high],
        "drop": base.value - cand.value,
        "drop_interval_unpaired": list(unpaired),
        "drop_interval_paired": list(paired),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sentences", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        encoder = encoder_fidelity(args.sentences, Path(tmp) / "encoder")
        drop = paired_drop(Path(tmp) / "digits")
    doc = {
        "machine": platform.platform(),
        "seconds": round(time.monotonic() - started, 1),
        "encoder": encoder,
        "drop": drop,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))

    def iv(v: list[float], digits: int = 4) -> str:
        return f"{v[0]:.{digits}f} [{v[1]:.{digits}f}, {v[2]:.{digits}f}]"

    print(f"encoder, {encoder['eval_samples']} sentences: {encoder['model']}")
    print(f"  top-1 agreement over embedding dims: {iv(encoder['top1_agreement'])}")
    print(f"  cosine similarity:                   {iv(encoder['cosine'], 6)}")
    print(f"{drop['model']}")
    print(f"  accuracy fp32 {iv(drop['baseline_accuracy'])}, int8 {iv(drop['int8_accuracy'])}")
    lo_u, hi_u = drop["drop_interval_unpaired"]
    lo_p, hi_p = drop["drop_interval_paired"]
    print(
        f"  drop {drop['drop']:+.4f}: unpaired [{lo_u:+.4f}, {hi_u:+.4f}] "
        f"(width {hi_u - lo_u:.4f}), paired [{lo_p:+.4f}, {hi_p:+.4f}] (width {hi_p - lo_p:.4f})"
    )
    print(f"written to {args.out} in {doc['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
