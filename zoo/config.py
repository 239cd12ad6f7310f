"""Architecture configs that round-trip through Hugging Face ``config.json``.

A config is plain data. ``to_hf_dict`` writes exactly the keys transformers'
``LlamaConfig`` / ``BertConfig`` / ``T5Config`` read, so ``AutoModel*.from_pretrained(model_dir)``
opens our dirs unchanged; ``from_hf_dict`` reads theirs back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edgezoo.errors import ConfigError

# Special token ids fixed by our tokenizer (zoo.tokenizer.SPECIAL_TOKENS order).
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


@dataclass
class LlamaConfig:
    """Decoder-only LM: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention."""

    id2label: dict[int, str] | None = None  # set: a sequence classifier on this decoder
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    bos_token_id: int = BOS_ID
    eos_token_id: int = EOS_ID
    pad_token_id: int = PAD_ID
    preset: str | None = None
    # None: hidden_size // num_attention_heads (every preset). Set when structured pruning
    # removed heads: fewer heads of the same width, so q/o_proj are narrower than hidden.
    explicit_head_dim: int | None = None

    def __post_init__(self) -> None:
        derived = self.hidden_size // self.num_attention_heads
        if self.explicit_head_dim == derived and not self.hidden_size % self.num_attention_heads:
            self.explicit_head_dim = None  # one spelling per architecture
        if self.id2label:
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        if self.explicit_head_dim is not None and self.explicit_head_dim < 1:
            raise ConfigError(f"head_dim {self.explicit_head_dim} must be a positive integer.")
        if self.explicit_head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; pick a width that is a multiple of the heads."
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads} (grouped-query attention)."
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim {self.head_dim} must be even for rotary embeddings.")

    @property
    def family(self) -> str:
        return "cls" if self.id2label else "lm"

    @property
    def num_labels(self) -> int:
        return len(self.id2label or {})

    @property
    def head_dim(self) -> int:
        if self.explicit_head_dim is not None:
            return self.explicit_head_dim
        return self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict[str, Any]:
        d = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "hidden_act": "silu",
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }
        if self.id2label:
            d["architectures"] = ["LlamaForSequenceClassification"]
            d["tie_word_embeddings"] = False
            d.update(
                num_labels=self.num_labels,
                id2label={str(i): v for i, v in self.id2label.items()},
                label2id={v: i for i, v in self.id2label.items()},
                problem_type="single_label_classification",
            )
        if self.preset:
            d["edgezoo_preset"] = self.preset
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        if d.get("model_type") != "llama":
            raise ConfigError(f"expected model_type 'llama', got {d.get('model_type')!r}")
        if d.get("rope_scaling"):
            raise ConfigError("rope_scaling is not supported by the zoo Llama family yet")
        heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            max_position_embeddings=d["max_position_embeddings"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=d.get("rope_theta", 10000.0),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            bos_token_id=_first(d.get("bos_token_id"), BOS_ID),
            eos_token_id=_first(d.get("eos_token_id"), EOS_ID),
            pad_token_id=_first(d.get("pad_token_id"), PAD_ID),
            preset=d.get("edgezoo_preset"),
            explicit_head_dim=d.get("head_dim"),
            id2label=(
                {int(k): v for k, v in (d.get("id2label") or {}).items()}
                if "LlamaForSequenceClassification" in (d.get("architectures") or [])
                else None
            ),
        )


@dataclass
class BertConfig:
    """Encoder classifier, BERT-style (post-norm, learned positions, GELU, pooler)."""

    family: ClassVar[str] = "cls"
    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    max_position_embeddings: int = 256
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    num_labels: int = 2
    id2label: dict[int, str] = field(default_factory=dict)
    pad_token_id: int = PAD_ID
    preset: str | None = None
    # layer -> original head indices removed by structured pruning (transformers' own
    # ``pruned_heads``: BERT keeps head width hidden_size / num_attention_heads).
    pruned_heads: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}."
            )
        self.pruned_heads = {
            int(k): sorted({int(h) for h in v}) for k, v in self.pruned_heads.items() if v
        }
        for layer, heads in self.pruned_heads.items():
            if not 0 <= layer < self.num_hidden_layers:
                raise ConfigError(
                    f"pruned_heads names layer {layer}; the model has {self.num_hidden_layers}."
                )
            if not all(0 <= h < self.num_attention_heads for h in heads):
                raise ConfigError(
                    f"pruned_heads[{layer}] = {heads} names heads outside 0..{self.num_attention_heads - 1}."
                )
            if len(heads) == self.num_attention_heads:
                raise ConfigError(f"pruned_heads removes every head of layer {layer}; keep one.")
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(k): v for k, v in self.id2label.items()}
        if len(self.id2label) != self.num_labels:
            raise ConfigError(
                f"id2label has {len(self.id2label)} entries, num_labels is {self.num_labels}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def heads_in_layer(self, layer: int) -> int:
        return self.num_attention_heads - len(self.pruned_heads.get(layer, ()))

    def to_hf_dict(self) -> dict[str, Any]:
        d = {
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "classifier_dropout": None,
            "position_embedding_type": "absolute",
            "initializer_range": 0.02,
            "pad_token_id": self.pad_token_id,
            "num_labels": self.num_labels,
            "id2label": {str(i): v for i, v in self.id2label.items()},
            "label2id": {v: i for i, v in self.id2label.items()},
            "problem_type": "single_label_classification",
            "torch_dtype": "float32",
        }
        if self.pruned_heads:  # only when pruned: unpruned configs stay byte-identical
            d["pruned_heads"] = {str(k): v for k, v in self.pruned_heads.items()}
        if self.preset:
            d["edgezoo_preset"] = self.preset
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> BertConfig:
        if d.get("model_type") != "bert":
            raise ConfigError(f"expected model_type 'bert', got {d.get('model_type')!r}")
        if d.get("hidden_act", "gelu") != "gelu":
            raise ConfigError("only hidden_act 'gelu' is supported by the zoo BERT family")
        id2label = {int(k): v for k, v in (d.get("id2label") or {}).items()}
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            max_position_embeddings=d["max_position_embeddings"],
            type_vocab_size=d.get("type_vocab_size", 2),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            num_labels=len(id2label) or d.get("num_labels", 2),
            id2label=id2label,
            pad_token_id=d.get("pad_token_id", PAD_ID) or 0,
            preset=d.get("edgezoo_preset"),
            pruned_heads={int(k): list(v) for k, v in (d.get("pruned_heads") or {}).items()},
        )


# feed_forward_proj values the s2s family implements: (activation, gated).
T5_FEED_FORWARD = {
    "relu": ("relu", False),
    "gated-relu": ("relu", True),
    "gated-gelu": ("gelu_new", True),  # T5 v1.1: tanh-approximated GELU
    "gated-silu": ("silu", True),
}


@dataclass
class T5Config:
    """Encoder–decoder, T5-style: relative position buckets, RMS layer norm, no biases.

    Field names follow the other families (``hidden_size``, ``num_hidden_layers``...) so
    presets and ``--layers/--width`` treat it alike; ``to_hf_dict`` writes T5's own keys.
    """

    family: ClassVar[str] = "s2s"
    vocab_size: int = 4096
    hidden_size: int = 128  # d_model
    intermediate_size: int = 256  # d_ff
    num_hidden_layers: int = 2  # encoder blocks (num_layers)
    num_decoder_layers: int | None = None  # None: as many as the encoder
    num_attention_heads: int = 4
    explicit_head_dim: int | None = None  # d_kv when not hidden_size // heads
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 512  # longest source/target trained on (n_positions)
    pad_token_id: int = PAD_ID
    eos_token_id: int = EOS_ID
    decoder_start_token_id: int = PAD_ID  # T5 starts decoding from <pad>
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.num_decoder_layers == self.num_hidden_layers:
            self.num_decoder_layers = None
        if self.explicit_head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; pick a width that is a multiple of the heads."
            )
        if self.explicit_head_dim == self.hidden_size // self.num_attention_heads:
            self.explicit_head_dim = None  # one spelling per architecture
        if self.feed_forward_proj not in T5_FEED_FORWARD:
            raise ConfigError(
                f"feed_forward_proj {self.feed_forward_proj!r} is not supported; use one of "
                f"{', '.join(T5_FEED_FORWARD)}."
            )

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def decoder_layers(self) -> int:
        return self.num_decoder_layers or self.num_hidden_layers

    def to_hf_dict(self) -> dict[str, Any]:
        d = {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": self.vocab_size,
            "d_model": self.hidden_size,
            "d_kv": self.head_dim,
            "d_ff": self.intermediate_size,
            "num_layers": self.num_hidden_layers,
            "num_decoder_layers": self.decoder_layers,
            "num_heads": self.num_attention_heads,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "dropout_rate": 0.0,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_factor": 1.0,
            "feed_forward_proj": self.feed_forward_proj,
            "is_encoder_decoder": True,
            "tie_word_embeddings": self.tie_word_embeddings,
            "n_positions": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }
        if self.preset:
            d["edgezoo_preset"] = self.preset
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> T5Config:
        if d.get("model_type") != "t5":
            raise ConfigError(f"expected model_type 't5', got {d.get('model_type')!r}")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["d_model"],
            intermediate_size=d["d_ff"],
            num_hidden_layers=d["num_layers"],
            num_decoder_layers=d.get("num_decoder_layers"),
            num_attention_heads=d["num_heads"],
            explicit_head_dim=d.get("d_kv"),
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=d.get("feed_forward_proj", "relu"),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            max_position_embeddings=d.get("n_positions") or 512,
            pad_token_id=_first(d.get("pad_token_id"), PAD_ID),
            eos_token_id=_first(d.get("eos_token_id"), EOS_ID),
            decoder_start_token_id=_first(d.get("decoder_start_token_id"), PAD_ID),
            preset=d.get("edgezoo_preset"),
        )


ModelConfig = LlamaConfig | BertConfig | T5Config


def config_from_hf_dict(d: dict[str, Any]) -> ModelConfig:
    """Pick the family from ``model_type``; a config lacking a size field says which."""
    if not isinstance(d, dict):
        raise ConfigError(
            "config.json must be a JSON object of settings; restore it from the source model."
        )
    kind = d.get("model_type")
    if kind is None:
        raise ConfigError(
            "config.json names no model_type (llama, bert or t5 for zoo models); restore the file "
            "from the source model or re-create the model dir."
        )
    family = {"llama": LlamaConfig, "bert": BertConfig, "t5": T5Config}.get(kind)
    if family is not None:
        try:
            return family.from_hf_dict(d)
        except KeyError as e:
            raise ConfigError(
                f"config.json (model_type {kind!r}) lacks {e.args[0]!r}; restore the file from "
                "the source model or re-create the model dir."
            ) from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(
                f"config.json (model_type {kind!r}) has a value of the wrong type ({e}); restore "
                "the file from the source model or re-create the model dir."
            ) from None
    raise ConfigError(
        f"model_type {kind!r} is not a zoo family (llama, bert, t5). For other Hugging Face "
        f"models use `edgezoo export --from-hf DIR`, which goes through optimum."
    )


def replace(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    return dataclasses.replace(cfg, **changes)


def _first(value: Any, default: int) -> int:
    if isinstance(value, list):
        value = value[0] if value else None
    return default if value is None else int(value)
