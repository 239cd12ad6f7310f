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
    # Per output other than the first (e.g. an encoder's last_hidden_state): each is checked
    # against PyTorch like the logits, and its own max |Δ| is recorded beside theirs.
    by_output: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        extra = {"max_abs_diff_by_output": self.by_output} if self.by_output else {}
        return {
            **extra,
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
    """A CPU session for checking a graph. Weight prepacking is off: it would hold a second
    copy of every MatMul weight, and validation runs each graph only a few times."""
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.log_severity_level = 3  # errors only (not the note on overridable initializers)
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise ExportError(f"ONNX Runtime cannot load {path.name}: {e}") from e


@dataclass
class Case:
    """One validation input and what PyTorch computed for it."""

    shape: tuple[int, ...]  # (batch, seq, past) for decoders, (batch, seq) for encoders
    inputs: list[np.ndarray]  # in the graph's input order
    expected: list[np.ndarray]  # in the graph's output order


@dataclass
class Reference:
    """Everything validation compares against, computed once from the PyTorch model.

    Kept as arrays so the model can be freed before ONNX Runtime loads a graph: at scale
    the two are never resident together (an export's peak memory stays near twice the
    weights). ``gqa`` has no position ids (that graph derives positions from the mask)."""

    config: dict  # the model's config.json, for the runtime's decode loop
    portable: list[Case]
    gqa: list[Case] = field(default_factory=list)
    greedy_prompt: list[int] = field(default_factory=list)
    greedy_tokens: list[int] = field(default_factory=list)


@torch.no_grad()
def reference(
    model: nn.Module, vocab: int, greedy_steps: int, gqa_shapes: list | None = None
) -> Reference:
    """Run PyTorch on the validation inputs (seeded) and on one greedy decode."""
    cfg = model.config
    if cfg.family == "lm":
        wrapper = DecoderForExport(model).eval()
        gen = torch.Generator().manual_seed(0)
        inputs = [decoder_inputs(cfg, b, s, p, gen, vocab) for b, s, p in DECODER_SHAPES]
        portable = [
            _case(shape, x, wrapper(*x)) for shape, x in zip(DECODER_SHAPES, inputs, strict=True)
        ]
        gen = torch.Generator().manual_seed(1)
        gqa = []
        for shape in gqa_shapes or []:
            x = decoder_inputs(cfg, *shape, generator=gen, vocab=vocab)
            gqa.append(_case(shape, [x[0], x[1], *x[3:]], wrapper(*x)))
        prompt, tokens = _greedy_reference(model, greedy_steps, vocab)
        return Reference(cfg.to_hf_dict(), portable, gqa, prompt, tokens)
    wrapper = classifier_wrapper(model).eval()
    gen = torch.Generator().manual_seed(0)
    inputs = [encoder_inputs(cfg, b, s, gen, vocab) for b, s in ENCODER_SHAPES]
    portable = [
        _case(shape, x, wrapper(*x)) for shape, x in zip(ENCODER_SHAPES, inputs, strict=True)
    ]
    return Reference(cfg.to_hf_dict(), portable)


def _case(shape: tuple, inputs: list[torch.Tensor], outputs) -> Case:
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    return Case(tuple(shape), [t.numpy() for t in inputs], [t.numpy() for t in outputs])


def _greedy_reference(model: nn.Module, steps: int, vocab: int) -> tuple[list[int], list[int]]:
    if not steps:
        return [], []
    steps = min(steps, model.config.max_position_embeddings - 8)
    gen = torch.Generator().manual_seed(0)
    prompt = [1, *torch.randint(4, vocab, (7,), generator=gen).tolist()]
    return prompt, generate_ids(model, prompt, steps)


def compare_outputs(
    sess: ort.InferenceSession, cases: list[Case], tolerance: float, what: str = "ONNX output"
) -> Validation:
    """Run each case through ORT; fail if any output differs from PyTorch's by > tolerance."""
    result = Validation()
    names = [i.name for i in sess.get_inputs()]
    for case in cases:
        got = sess.run(None, dict(zip(names, case.inputs, strict=True)))
        diffs = [float(np.abs(g - e).max()) for g, e in zip(got, case.expected, strict=True)]
        diff = max(diffs)
        outputs = [o.name for o in sess.get_outputs()]
        if len(outputs) > 1 and not outputs[1].startswith("present."):
            for name, d in zip(outputs, diffs, strict=True):
                result.by_output[name] = max(result.by_output.get(name, 0.0), d)
        result.max_abs_diff = max(result.max_abs_diff, diff)
        result.shapes.append(list(case.shape))
        if diff > tolerance:
            raise ExportError(
                f"{what} differs from PyTorch by {diff:.2e} > {tolerance:.0e} at (batch, seq, past)={case.shape}."
            )
    return result


def runtime_greedy(
    sess: ort.InferenceSession,
    graph: str,
    config: dict,
    tokenizer: Tokenizer,
    prompt: list[int],
    steps: int,
) -> list[int]:
    """Greedy tokens from the runtime's own decode loop (``LanguageModel`` and its KV cache
    classes) over ``sess``: validation tests the code that ships, not a copy of it."""
    lm = LanguageModel(sess, tokenizer, config, graph=graph)
    params = SamplingParams(max_new_tokens=steps, ignore_eos=True)
    return lm.generate_ids([prompt], params)[0].token_ids


def first_greedy_mismatch(
    ref: Reference, sess: ort.InferenceSession, graph: str, tokenizer: Tokenizer
) -> int | None:
    """Where the runtime's greedy tokens first differ from PyTorch's (None: all equal)."""
    steps = len(ref.greedy_tokens)
    got = runtime_greedy(sess, graph, ref.config, tokenizer, ref.greedy_prompt, steps)
    return next(
        (i for i, (a, b) in enumerate(zip(ref.greedy_tokens, got, strict=True)) if a != b), None
    )
