"""megadfm: DeepSpeed pre-training of discrete flow-matching (masked-diffusion) Qwen3 models."""

__version__ = "0.1.0"
