"""Token ids of the Qwen3 vocabulary that megadfm relies on, defined once (docs/DESIGN.md, "Conventions").

Qwen3's tokenizer has 151,669 entries (ids 0..151668); megadfm adds ``<|mask|>`` right after them.
The embedding and LM head keep Qwen3's padded 151,936 rows; ids above the mask are never produced.
"""

QWEN3_VOCAB_SIZE = 151936
"""Rows of Qwen3's embedding and LM head (the tokenizer's 151,669 entries padded)."""

ENDOFTEXT_TOKEN_ID = 151643
"""``<|endoftext|>``: appended to every document by preprocessing (end of document)."""

PAD_TOKEN_ID = ENDOFTEXT_TOKEN_ID
"""Fills the tail of a sample. Padding is never attended to and never scored, so reusing
``<|endoftext|>`` (as Qwen3's own tokenizer config does) is safe."""

IM_END_TOKEN_ID = 151645
"""``<|im_end|>``: Qwen3's chat end-of-turn token, the last token of every SFT response."""

MASK_TOKEN_ID = 151669
"""``<|mask|>``: the first id after the Qwen3 tokenizer's 151,669 entries."""
