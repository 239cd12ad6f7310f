"""Prove an exported graph computes what the PyTorch model computes.

Checks, in order: ``onnx.checker`` (full), an ONNX Runtime session loads it, logits and
KV outputs match PyTorch on fresh random inputs at several batch sizes, prompt lengths and
past lengths (past 0 included: it proves the dynamic axes survived tracing), and 64
greedy decode steps through the runtime's own decode loop and KV cache give exactly
PyTorch's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tokenizers import Tokenizer
from torch import nn

from edgezoo.errors import ExportError
from edgezoo.export.wrappers import (
    DecoderForExport,
    classifier_wrapper,
    decoder_inputs,
    encoder_inputs,
)
from edgezoo.runtime.language_model import LanguageModel
from edgezoo.runtime.sampling import SamplingParams
from edgezoo.zoo.generate import generate_ids

DECODER_SHAPES = [(1, 1, 0), (2, 7, 0), (1, 1, 9), (3, 4, 5), (2, 1, 33)]  # (batch, seq, past)
ENCODER_SHAPES = [(1, 5), (3, 17), (2, 64)]


@dataclass
class Validation:
    max_abs_diff: float = 0.0
    shapes: list = field(default_factory=list)
    greedy_steps: int = 0
    greedy_match: bool = True
    first_mismatch: int | None = None

    def as_dict(self) -> dict:
        return {
            "max_abs_diff": self.max_abs_diff,
            "validated_shapes": self.shapes,
            "greedy_steps": self.greedy_steps,
            "greedy_match": self.greedy_match,
        }


# ONNX Runtime registers these in the default ONNX domain, where onnx.checker does not know
# them; a graph built with them is checked with the nodes moved to a private domain.
ORT_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})
_PRIVATE_DOMAIN = "edgezoo.ort-default-domain"


def check_graph(path: Path, ort_only: bool = False) -> None:
    """``onnx.checker`` with full shape inference. ``ort_only`` graphs (the transformer
    optimizer's) use contrib ops the checker cannot place; for them ORT loading is the check.
    ORT's own default-domain ops (``ORT_DEFAULT_DOMAIN_OPS``) are checked in a private domain
    so that the rest of the graph (order, names, initializers, shapes) is still checked."""
    if ort_only:
        return
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        if node.domain == "" and node.op_type in ORT_DEFAULT_DOMAIN_OPS:
            node.domain = _PRIVATE_DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(_PRIVATE_DOMAIN, 1))
    external = any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    # In memory when the weights are inside the file (read once); with external weights the
    # checker needs a file beside them, so a renamed copy is written there for the check.
    copy = path.with_name(path.stem + ".checking.onnx")
    try:
        if external:
            onnx.save(model, str(copy))
        onnx.checker.check_model(str(copy) if external else model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path.name} fails onnx.checker: {e}") from e
    finally:
        copy.unlink(missing_ok=True)


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {path.name}: {e}") from e


@torch.no_grad()
def compare_logits(
    model: nn.Module,
    sess: ort.InferenceSession,
    tolerance: float,
    vocab: int | None = None,
    seed: int = 0,
) -> Validation:
    """Run the same random inputs through PyTorch and ORT; fail if any output differs."""
    gen = torch.Generator().manual_seed(seed)
    result = Validation()
    names = [i.name for i in sess.get_inputs()]
    if model.config.family == "lm":
        wrapper, cases = (
            DecoderForExport(model).eval(),
            [decoder_inputs(model.config, b, s, p, gen, vocab) for b, s, p in DECODER_SHAPES],
        )
        shapes = DECODER_SHAPES
    else:
        wrapper, cases = (
            classifier_wrapper(model).eval(),
            [encoder_inputs(model.config, b, s, gen, vocab) for b, s in ENCODER_SHAPES],
        )
        shapes = ENCODER_SHAPES
    for shape, inputs in zip(shapes, cases, strict=True):
        expected = wrapper(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        result.shapes.append(list(shape))
        if diff > tolerance:
            raise ExportError(
                f"ONNX output differs from PyTorch by {diff:.2e} > {tolerance:.0e} at (batch, seq, past)={shape}."
            )
    return result


def runtime_greedy(
    sess: ort.InferenceSession,
    graph: str,
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: list[int],
    steps: int,
) -> list[int]:
    """Greedy tokens from the runtime's own decode loop (``LanguageModel`` and its KV cache
    classes) over ``sess``: validation tests the code that ships, not a copy of it."""
    lm = LanguageModel(sess, tokenizer, model.config.to_hf_dict(), graph=graph)
    params = SamplingParams(max_new_tokens=steps, ignore_eos=True)
    return lm.generate_ids([prompt], params)[0].token_ids


def compare_greedy(
    model: nn.Module, token_fn, steps: int, vocab: int, seed: int = 0
) -> tuple[int, int | None]:
    """Greedy tokens from PyTorch vs ``token_fn(prompt, steps)``; returns (steps, first mismatch)."""
    cfg = model.config
    steps = min(steps, cfg.max_position_embeddings - 8)
    prompt = [
        1,
        *torch.randint(4, vocab, (7,), generator=torch.Generator().manual_seed(seed)).tolist(),
    ]
    expected = generate_ids(model, prompt, steps)
    got = token_fn(prompt, steps)
    mismatch = next((i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b), None)
    return steps, mismatch
