"""Read and write Hugging Face-layout model dirs (config.json + model.safetensors).

This is the one artifact every stage shares; transformers opens it unchanged. Weights are
safetensors only (nothing here unpickles), and every write is atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgezoo import atomic
from edgezoo.errors import CheckpointError, ConfigError
from edgezoo.model_card import write_card
from edgezoo.zoo.bert import BertForSequenceClassification
from edgezoo.zoo.config import BertConfig, LlamaConfig, ModelConfig, T5Config, config_from_hf_dict
from edgezoo.zoo.llama import LlamaForCausalLM, LlamaForSequenceClassification
from edgezoo.zoo.t5 import T5ForConditionalGeneration

GENERATION_CONFIG_FILE = "generation_config.json"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def build_model(cfg: ModelConfig) -> nn.Module:
    if isinstance(cfg, LlamaConfig):
        return LlamaForSequenceClassification(cfg) if cfg.id2label else LlamaForCausalLM(cfg)
    if isinstance(cfg, BertConfig):
        return BertForSequenceClassification(cfg)
    if isinstance(cfg, T5Config):
        return T5ForConditionalGeneration(cfg)
    raise ConfigError(f"no model family for config {type(cfg).__name__}")


def weights_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied weights stored once (as transformers does) and contiguous."""
    return store_tied_once(model.state_dict(), getattr(model, "config", None))


def store_tied_once(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    state = dict(state)
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def with_tied(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """The inverse: a full state dict (both names) for ``load_state_dict``-style APIs."""
    if getattr(cfg, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        embed = "shared.weight" if isinstance(cfg, T5Config) else "model.embed_tokens.weight"
        state = {**state, "lm_head.weight": state[embed]}
    return state


def save_weights(model: nn.Module, path: str | Path) -> None:
    state = weights_for_saving(model)
    atomic.write_with(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def save_config(cfg: ModelConfig, folder: str | Path) -> None:
    """config.json, and for a causal LM or seq2seq model the generation_config.json
    transformers reads."""
    atomic.write_json(Path(folder) / CONFIG_FILE, cfg.to_hf_dict())
    if isinstance(cfg, LlamaConfig) and not cfg.id2label:
        atomic.write_json(
            Path(folder) / GENERATION_CONFIG_FILE,
            {
                "bos_token_id": cfg.bos_token_id,
                "eos_token_id": cfg.eos_token_id,
                "pad_token_id": cfg.pad_token_id,
                "max_length": cfg.max_position_embeddings,
            },
        )
    if isinstance(cfg, T5Config):
        atomic.write_json(
            Path(folder) / GENERATION_CONFIG_FILE,
            {
                "decoder_start_token_id": cfg.decoder_start_token_id,
                "eos_token_id": cfg.eos_token_id,
                "pad_token_id": cfg.pad_token_id,
            },
        )


def save_model_dir(model: nn.Module, folder: str | Path) -> Path:
    """Write config.json, model.safetensors and the README.md model card (tokenizer files
    are written by zoo.tokenizer; later stages refresh the card as they add to the dir)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(model.config, folder)
    save_weights(model, folder / WEIGHTS_FILE)
    write_card(folder)
    return folder


def load_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not a model dir: {CONFIG_FILE} is missing. Train one with `edgezoo train` or pass the right path."
        )
    try:
        return config_from_hf_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path} is not a valid model config ({e}); re-create the model dir."
        ) from e


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Copy the safetensors weights into ``model``, one tensor at a time.

    Reading tensor by tensor from the memory-mapped file (instead of ``load_file`` and
    ``load_state_dict``) keeps the peak near one copy of the weights, not two: what lets
    an ``xl`` model be exported on a machine with a few times its size in memory."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing; the model dir is incomplete.")
    tied = getattr(model.config, "tie_word_embeddings", False)
    targets = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = set(f.keys()) - ({"lm_head.weight"} if tied else set())
            missing, unexpected = sorted(targets.keys() - stored), sorted(stored - targets.keys())
            if not missing and not unexpected:
                with torch.no_grad():
                    for name, target in targets.items():
                        target.copy_(f.get_tensor(name))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({e}); restore it from a checkpoint or retrain."
        ) from e
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}. "
            "Was config.json edited or replaced?"
        )


def fp32_weight_bytes(folder: str | Path) -> int:
    """Bytes of the model's weights in fp32, read from the safetensors header only."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing; the model dir is incomplete.")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = [f.get_slice(name).get_shape() for name in f.keys()]  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({e}); restore it from a checkpoint or retrain."
        ) from e
    return 4 * sum(int(np.prod(shape)) for shape in shapes)


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build the family from config.json and load its safetensors weights (eval mode)."""
    cfg = load_config(folder)
    model = build_model(cfg)
    load_weights(model, Path(folder) / WEIGHTS_FILE)
    return model.to(device).eval()
