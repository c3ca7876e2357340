"""The bidirectional Qwen3 + AdaLN(t) model (qwen3_dfm.py), its config, time conditioning and kernels."""

from megadfm.model.config import MASK_TOKEN_ID, QWEN3_VOCAB_SIZE, ModelConfig
from megadfm.model.kv_cache import KVCache
from megadfm.model.qwen3_dfm import IGNORE_INDEX, Qwen3DFM, mask_embedding_init_

__all__ = ["IGNORE_INDEX", "KVCache", "MASK_TOKEN_ID", "QWEN3_VOCAB_SIZE", "ModelConfig", "Qwen3DFM", "mask_embedding_init_"]
