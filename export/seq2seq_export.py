"""Export an encoder–decoder (s2s) model dir as the three graphs Optimum's
``ORTModelForSeq2SeqLM`` loads: ``encoder_model.onnx``, ``decoder_model.onnx`` (first step;
it projects the cross-attention K/V from the encoder output, once per source) and
``decoder_with_past_model.onnx`` (every later step: one token in, its self-attention K/V
appended, the cross-attention K/V read back from the cache).

Validated before anything is published: each graph's outputs against PyTorch at shapes
other than the traced ones (so the axes stayed dynamic), then greedy decoding through the
runtime's own ``Seq2SeqModel`` loop must give PyTorch's tokens exactly. One manifest
variant (``fp32``) names the three files.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from edgezoo import io_names, manifest
from edgezoo.errors import ExportError
from edgezoo.export.provenance import source_commit, versions
from edgezoo.model_card import write_card
from edgezoo.onnx_files import file_facts, io_signature, publish
from edgezoo.progress import stage
from edgezoo.zoo.modeldir import WEIGHTS_FILE, load_model
from edgezoo.zoo.tokenizer import load_tokenizer

ROLES = {
    "encoder": io_names.ENCODER_FILE,
    "decoder": io_names.DECODER_FILE,
    "decoder_with_past": io_names.DECODER_WITH_PAST_FILE,
}


class EncoderGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode(input_ids, attention_mask)


class DecoderGraph(nn.Module):
    """First step: logits and every layer's self- and cross-attention K/V."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, encoder_attention_mask: Tensor, input_ids: Tensor, encoder_hidden: Tensor):
        logits, cache = self.model.decode(input_ids, encoder_hidden, encoder_attention_mask)
        return (logits, *[t for layer in cache for t in layer])


class DecoderWithPastGraph(nn.Module):
    """Later steps: the cache in (4 tensors a layer), logits and the grown self K/V out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.layers = model.config.decoder_layers

    def forward(self, encoder_attention_mask: Tensor, input_ids: Tensor, *past: Tensor):
        cache = [tuple(past[4 * i : 4 * i + 4]) for i in range(self.layers)]
        logits, presents = self.model.decode(input_ids, None, encoder_attention_mask, cache)
        return (logits, *[t for layer in presents for t in layer[:2]])


def sample_inputs(model: nn.Module, batch: int, src: int, tgt: int, past: int, seed: int = 0):
    """Random but valid inputs for each graph (one right-padded source row when batch > 1)."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, cfg.vocab_size, (batch, src), generator=g)
    mask = torch.ones(batch, src, dtype=torch.long)
    if batch > 1 and src > 2:
        mask[-1, src // 2 :] = 0
    dec = torch.randint(4, cfg.vocab_size, (batch, tgt), generator=g)
    with torch.no_grad():
        hidden = model.encode(ids, mask)
        _, cache = model.decode(
            torch.randint(4, cfg.vocab_size, (batch, max(past, 1)), generator=g), hidden, mask
        )
    cache = [(k[:, :, :past], v[:, :, :past], ck, cv) for k, v, ck, cv in cache]
    flat = [t for layer in cache for t in layer]
    return {
        "encoder": (ids, mask),
        "decoder": (mask, dec, hidden),
        "decoder_with_past": (mask, dec[:, :1], *flat),
    }


def _dynamic_shapes(role: str, layers: int) -> tuple:
    batch = torch.export.Dim("batch", min=1, max=1024)
    src = torch.export.Dim("encoder_sequence_length", min=1, max=4096)
    tgt = torch.export.Dim("decoder_sequence_length", min=1, max=4096)
    past = torch.export.Dim("past_decoder_sequence_length", min=0, max=4096)
    if role == "encoder":
        return ({0: batch, 1: src}, {0: batch, 1: src})
    if role == "decoder":
        return ({0: batch, 1: src}, {0: batch, 1: tgt}, {0: batch, 1: src})
    kv = [({0: batch, 2: past},) * 2 + ({0: batch, 2: src},) * 2 for _ in range(layers)]
    return ({0: batch, 1: src}, {0: batch}, tuple(d for layer in kv for d in layer))


def export_graph(model: nn.Module, role: str, path: Path, opset: int) -> None:
    """Trace one graph with dynamic batch and lengths (traced at sizes > 1: see onnx_export)."""
    from edgezoo.export.onnx_export import _exporter_summary, _quiet_exporter

    wrapper = {"encoder": EncoderGraph, "decoder": DecoderGraph}.get(role, DecoderWithPastGraph)
    inputs, outputs = io_names.seq2seq_io_names(model.config.decoder_layers)[role]
    sample = sample_inputs(model, batch=2, src=5, tgt=3, past=4)[role]
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper(model).eval(),
                sample,
                dynamo=True,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=_dynamic_shapes(role, model.config.decoder_layers),
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types
        raise ExportError(
            f"torch.onnx.export failed for the {role} graph: {_exporter_summary(e)}"
        ) from e
    program.save(str(path), external_data=True)


def check_graph(model: nn.Module, role: str, path: Path, tolerance: float) -> float:
    """Max |Δ| of the graph's outputs against PyTorch at untraced shapes (incl. batch 1,
    one target token and, for the cached decoder, an empty past)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    worst = 0.0
    wrapper = {"encoder": EncoderGraph, "decoder": DecoderGraph}.get(role, DecoderWithPastGraph)
    for batch, src, tgt, past in ((1, 1, 1, 0), (3, 9, 2, 6)):
        sample = sample_inputs(model, batch, src, tgt, past, seed=src)[role]
        with torch.no_grad():
            expected = wrapper(model)(*sample)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, {n: t.numpy() for n, t in zip(names, sample, strict=True)})
        for want, have in zip(expected, got, strict=True):
            if tuple(want.shape) != have.shape:
                raise ExportError(
                    f"{role} graph gave shape {have.shape}, PyTorch {tuple(want.shape)}"
                )
            worst = max(worst, float(np.abs(want.numpy() - have).max(initial=0.0)))
    if worst > tolerance:
        raise ExportError(f"{role} graph differs from PyTorch by {worst:.2e} (> {tolerance:g}).")
    return worst


def check_greedy(model: nn.Module, folder: Path, tokenizer, steps: int) -> int:
    """Greedy tokens of the runtime's decode loop over the three graphs == PyTorch's."""
    from edgezoo.runtime.seq2seq import Seq2SeqModel

    runtime_model = Seq2SeqModel.from_files(
        {role: folder / name for role, name in ROLES.items()}, tokenizer, model.config.to_hf_dict()
    )
    ids, mask = sample_inputs(model, batch=3, src=11, tgt=1, past=0, seed=7)["encoder"]
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    want = model.generate_greedy(ids, mask, max_new_tokens=steps)
    got = runtime_model.generate_ids(rows, max_new_tokens=steps)
    for i, (w, g) in enumerate(zip(want, got, strict=True)):
        if w != g.token_ids:
            pairs = zip(w, g.token_ids, strict=False)
            first = next(
                (j for j, (a, b) in enumerate(pairs) if a != b), min(len(w), len(g.token_ids))
            )
            raise ExportError(
                f"greedy decoding through the ONNX graphs diverged from PyTorch on row {i} at step {first}."
            )
    return max(len(w) for w in want)


def export_seq2seq(
    model_dir: Path, opset: int, tolerance: float = 1e-4, greedy_steps: int = 32
) -> dict:
    """Build, validate and publish the three graphs; record them as the ``fp32`` variant.

    Built in a temporary folder inside ``onnx/``: a graph that fails validation leaves
    any earlier export as it was. Returns the manifest entry."""
    model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    out_dir = manifest.onnx_dir(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        graphs, worst, t0 = {}, 0.0, time.perf_counter()
        for role, name in ROLES.items():
            with stage(f"export {model_dir.name}: build and check the {role} graph"):
                export_graph(model, role, tmp / name, opset)
                worst = max(worst, check_graph(model, role, tmp / name, tolerance))
            graphs[role] = {"file": name, **io_signature(tmp / name), **file_facts(tmp / name)}
        with stage(f"export {model_dir.name}: greedy decoding through the graphs"):
            steps = check_greedy(model, tmp, tokenizer, greedy_steps)
        for name in ROLES.values():
            publish(tmp / name, out_dir)
    entry = {
        "file": io_names.DECODER_FILE,
        "aliases": [io_names.ENCODER_FILE, io_names.DECODER_WITH_PAST_FILE],
        "graph": "portable",
        "precision": "fp32",
        "exporter": f"torch.onnx.export(dynamo=True) opset {opset}, Optimum seq2seq layout",
        "backends": ["ort-cpu", "ort-cuda"],
        "graphs": graphs,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "greedy_steps": steps,
        "export_s": round(time.perf_counter() - t0, 2),
        "sha256": graphs["decoder"]["sha256"],
        "bytes": sum(g["bytes"] for g in graphs.values()),
        "source_weights_sha256": _sha256(model_dir / WEIGHTS_FILE),
        "source_commit": source_commit(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest.add_variant(
        model_dir, "fp32", entry, recording=("fp32",), model_type="t5", family="s2s"
    )
    write_card(model_dir)
    return entry


def _sha256(path: Path) -> str:
    from edgezoo import atomic

    return atomic.sha256_file(path)
