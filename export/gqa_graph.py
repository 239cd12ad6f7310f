"""The fast decoder graph for ONNX Runtime: fused ops and an in-place KV cache.

A straight torch export of a Llama layer is ~80 nodes that concatenate the KV cache every
step. ONNX Runtime has contrib ops for exactly this architecture, the ones ONNX Runtime
GenAI's model builder emits; per layer this graph is about a dozen nodes:

    SkipSimplifiedLayerNormalization (residual add + RMSNorm) → MatMul (packed QKV)
    → GroupQueryAttention (rotary fused, causal mask from seqlens, KV cache)
    → MatMul (o_proj) → SkipSimplifiedLayerNormalization → SwiGLU MLP (3 MatMul)

GroupQueryAttention takes ``past_key_values.*`` as a buffer preallocated to the maximum
length: when the runtime binds ``present.*`` to the same buffer, the kernel writes the
new keys in place and nothing is copied per step. ``attention_mask`` only supplies the
valid lengths (``seqlens_k = sum(mask) - 1``, ``total_sequence_length``), so prompts in a
batch are right-padded and positions follow from the lengths.

No library writes this graph from a plain PyTorch module (optimum and the ORT transformer
optimizer do not fuse the dynamo export into GroupQueryAttention; ORT GenAI's builder
needs its own package and reloads the weights through transformers), so it is built here
from the weights with ``onnx.helper`` and validated against PyTorch like any export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from edgezoo.errors import ExportError
from export import validate
from zoo.config import LlamaConfig

MS = "com.microsoft"
# GroupQueryAttention cannot continue a multi-token prompt on a batch > 1 (ORT refuses
# "batch_size must be 1 when sequence_length > 1 and past context is given").
GQA_SHAPES = [(1, 1, 0), (2, 7, 0), (1, 1, 9), (1, 4, 5), (2, 1, 33)]


class GraphBuilder:
    """Tiny helper: name nodes, keep initializers, emit a model."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(
        self,
        op_type: str,
        inputs: list[str],
        n_out: int = 1,
        domain: str = "",
        name: str | None = None,
        **attrs,
    ) -> list[str]:
        self._n += 1
        name = name or f"{op_type}_{self._n}"
        outputs = [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=name, domain=domain, **attrs)
        )
        return outputs


def _weight(t: torch.Tensor) -> np.ndarray:
    """nn.Linear stores [out, in]; MatMul wants [in, out]."""
    return t.detach().float().numpy().T.copy()


def _rms_norm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    """The first layer's RMSNorm (later ones fuse with the residual add): ORT's
    SimplifiedLayerNormalization, one kernel where standard ops (until RMSNormalization in
    opset 23) take seven, each a dispatch that small models pay for on every token."""
    return g.op(
        "SimplifiedLayerNormalization",
        [x, weight],
        axis=-1,
        epsilon=eps,
        stash_type=1,
        name="layers.0.input_layernorm",
    )[0]


def build_gqa_decoder(model: torch.nn.Module, path: Path, opset: int = 18) -> None:
    cfg: LlamaConfig = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    g = GraphBuilder()
    n_layers, hd = cfg.num_hidden_layers, cfg.head_dim

    # Shared attention inputs, computed once from the mask.
    one = g.const("one", np.array([1], np.int64))
    row_sums = g.op("ReduceSum", ["attention_mask", one], keepdims=0, name="mask_row_sums")[0]
    seqlens = g.op(
        "Cast",
        [g.op("Sub", [row_sums, one], name="seqlens_k_i64")[0]],
        to=TensorProto.INT32,
        name="seqlens_k",
    )[0]
    total = g.op("Shape", ["attention_mask"], name="mask_shape")[0]
    total = g.op(
        "Gather", [total, g.const("axis1", np.array(1, np.int64))], axis=0, name="total_len_i64"
    )[0]
    total = g.op("Cast", [total], to=TensorProto.INT32, name="total_sequence_length")[0]
    positions = np.arange(cfg.max_position_embeddings, dtype=np.float32)[:, None]
    freqs = positions * model.model.rotary_emb.inv_freq.float().numpy()[None, :]
    cos = g.const("cos_cache", np.cos(freqs).astype(np.float32))
    sin = g.const("sin_cache", np.sin(freqs).astype(np.float32))

    embed = g.const("model.embed_tokens.weight", sd["model.embed_tokens.weight"].numpy())
    hidden = g.op("Gather", [embed, "input_ids"], name="embed_tokens")[0]
    residual = hidden
    normed = _rms_norm(
        g,
        hidden,
        g.const(
            "model.layers.0.input_layernorm.weight",
            sd["model.layers.0.input_layernorm.weight"].numpy(),
        ),
        cfg.rms_norm_eps,
    )
    for i in range(n_layers):
        p = f"model.layers.{i}"
        qkv_w = np.concatenate(
            [_weight(sd[f"{p}.self_attn.{n}_proj.weight"]) for n in ("q", "k", "v")], axis=1
        )
        qkv = g.op(
            "MatMul",
            [normed, g.const(f"{p}.self_attn.qkv_proj.weight", qkv_w)],
            name=f"layers.{i}.qkv_proj",
        )[0]
        attn, _, _ = g.op(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key_values.{i}.key",
                f"past_key_values.{i}.value",
                seqlens,
                total,
                cos,
                sin,
            ],
            n_out=3,
            domain=MS,
            name=f"layers.{i}.attn",
            num_heads=cfg.num_attention_heads,
            kv_num_heads=cfg.num_key_value_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(1.0 / np.sqrt(hd)),
        )
        g.nodes[-1].output[1], g.nodes[-1].output[2] = f"present.{i}.key", f"present.{i}.value"
        o = g.op(
            "MatMul",
            [
                attn,
                g.const(
                    f"{p}.self_attn.o_proj.weight", _weight(sd[f"{p}.self_attn.o_proj.weight"])
                ),
            ],
            name=f"layers.{i}.o_proj",
        )[0]
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization",
            [
                o,
                residual,
                g.const(
                    f"{p}.post_attention_layernorm.weight",
                    sd[f"{p}.post_attention_layernorm.weight"].numpy(),
                ),
            ],
            n_out=4,
            domain=MS,
            epsilon=cfg.rms_norm_eps,
            name=f"layers.{i}.post_attention_layernorm",
        )
        gate = g.op(
            "MatMul",
            [
                normed,
                g.const(f"{p}.mlp.gate_proj.weight", _weight(sd[f"{p}.mlp.gate_proj.weight"])),
            ],
            name=f"layers.{i}.gate_proj",
        )[0]
        up = g.op(
            "MatMul",
            [normed, g.const(f"{p}.mlp.up_proj.weight", _weight(sd[f"{p}.mlp.up_proj.weight"]))],
            name=f"layers.{i}.up_proj",
        )[0]
        act = g.op(
            "Mul",
            [gate, g.op("Sigmoid", [gate], name=f"layers.{i}.sigmoid")[0]],
            name=f"layers.{i}.silu",
        )[0]
        down_in = g.op("Mul", [act, up], name=f"layers.{i}.swiglu")[0]
        mlp = g.op(
            "MatMul",
            [
                down_in,
                g.const(f"{p}.mlp.down_proj.weight", _weight(sd[f"{p}.mlp.down_proj.weight"])),
            ],
            name=f"layers.{i}.down_proj",
        )[0]
        next_norm = (
            f"model.layers.{i + 1}.input_layernorm.weight"
            if i + 1 < n_layers
            else "model.norm.weight"
        )
        normed, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization",
            [mlp, residual, g.const(next_norm, sd[next_norm].numpy())],
            n_out=4,
            domain=MS,
            epsilon=cfg.rms_norm_eps,
            name=f"layers.{i + 1}.input_layernorm" if i + 1 < n_layers else "final_norm",
        )
    if cfg.tie_word_embeddings:  # one copy on disk; ORT folds the transpose at load
        head = g.op("Transpose", [embed], perm=[1, 0], name="lm_head.transpose")[0]
    else:
        head = g.const("lm_head.weight", _weight(sd["lm_head.weight"]))
    g.op("MatMul", [normed, head], name="lm_head")
    g.nodes[-1].output[0] = "logits"

    kv_shape = ["batch_size", cfg.num_key_value_heads, "past_sequence_length", hd]
    present_shape = ["batch_size", cfg.num_key_value_heads, "total_sequence_length", hd]
    inputs = [
        helper.make_tensor_value_info(
            "input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
        ),
        helper.make_tensor_value_info(
            "attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]
        ),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch_size", "sequence_length", cfg.vocab_size]
        )
    ]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape
                )
            )
            outputs.append(
                helper.make_tensor_value_info(
                    f"present.{i}.{kind}", TensorProto.FLOAT, present_shape
                )
            )
    graph = helper.make_graph(g.nodes, "edgezoo-llama-gqa", inputs, outputs, g.inits)
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
        producer_name="edgezoo",
    )
    proto.ir_version = 9
    from export.onnx_export import save_onnx

    save_onnx(proto, path)


def greedy_tokens_shared_buffer(
    sess: ort.InferenceSession, cfg: LlamaConfig, prompt: list[int], steps: int
) -> list[int]:
    """Greedy decode the way the runtime does it: one KV buffer per layer, bound as both
    past and present, so GroupQueryAttention appends in place."""
    max_len = len(prompt) + steps
    shape = (1, cfg.num_key_value_heads, max_len, cfg.head_dim)
    caches = [
        ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
        for _ in range(2 * cfg.num_hidden_layers)
    ]
    names = [
        f"past_key_values.{i}.{k}" for i in range(cfg.num_hidden_layers) for k in ("key", "value")
    ]
    out, ids, length = [], np.array([prompt], np.int64), 0
    for _ in range(steps):
        length += ids.shape[1]
        binding = sess.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((1, length), np.int64))
        binding.bind_output("logits")  # first, so it is output 0
        for name, cache in zip(names, caches, strict=True):
            binding.bind_ortvalue_input(name, cache)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), cache)
        sess.run_with_iobinding(binding)
        logits = binding.copy_outputs_to_cpu()[0]
        token = int(logits[0, -1].argmax())
        out.append(token)
        ids = np.array([[token]], np.int64)
    return out


def validate_gqa(
    model: torch.nn.Module, path: Path, tolerance: float, greedy_steps: int, vocab: int
) -> dict:
    """Same checks as the portable graph, plus greedy decoding through the shared buffer."""
    validate.check_graph(path)
    sess = validate.session(path)
    result = _compare_gqa_logits(model, sess, tolerance, vocab)
    if greedy_steps:
        steps, mismatch = validate.compare_greedy(
            model,
            lambda p, n: greedy_tokens_shared_buffer(sess, model.config, p, n),
            greedy_steps,
            vocab,
        )
        if mismatch is not None:
            raise ExportError(
                f"greedy decoding through the GQA graph's in-place cache diverged from PyTorch at step {mismatch}."
            )
        result.greedy_steps = steps
    entry = result.as_dict()
    entry["kv_cache"] = "shared past/present buffer of max length (bind present to past)"
    return entry


@torch.no_grad()
def _compare_gqa_logits(model, sess, tolerance: float, vocab: int) -> validate.Validation:
    """Compare against PyTorch with concatenating (unshared) caches of several lengths."""
    from export.wrappers import DecoderForExport, decoder_inputs

    gen = torch.Generator().manual_seed(1)
    wrapper = DecoderForExport(model).eval()
    result = validate.Validation()
    for shape in GQA_SHAPES:
        inputs = decoder_inputs(model.config, *shape, generator=gen, vocab=vocab)
        expected = wrapper(*inputs)
        feeds = {"input_ids": inputs[0].numpy(), "attention_mask": inputs[1].numpy()}
        names = [i.name for i in sess.get_inputs()][2:]
        feeds.update({n: t.numpy() for n, t in zip(names, inputs[3:], strict=True)})
        got = sess.run(None, feeds)
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
        result.max_abs_diff = max(result.max_abs_diff, diff)
        result.shapes.append(list(shape))
        if diff > tolerance:
            raise ExportError(
                f"GQA graph differs from PyTorch by {diff:.2e} > {tolerance:.0e} at (batch, seq, past)={shape}."
            )
    return result
