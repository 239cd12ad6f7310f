"""edgezoo.zoo: model families, size presets, tokenizer, data and training.

Everything here is plain PyTorch (the ``train`` extra). A trained model is saved as a
Hugging Face-layout model dir (config.json + model.safetensors + tokenizer.json) that every
later stage reads.
"""
