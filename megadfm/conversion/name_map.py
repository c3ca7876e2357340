"""The one declarative HF Qwen3 <-> megadfm parameter-name table.

``NAME_MAP`` lists every parameter that exists on both sides (HF name, megadfm name, shape, when it
exists); ``{i}`` is the layer index. Export inverts the same table. Parameters that exist on one
side only are listed explicitly:

- ``HF_ONLY``: ``lm_head.weight`` of a *tied* model. HF state dicts may carry it (an alias of the
  embedding); on import it must equal ``model.embed_tokens.weight`` and is dropped; export omits it
  (HF re-ties it on load, as ``save_pretrained`` does).
- ``MEGADFM_ONLY``: time conditioning (``time_embedding.*``, ``layers.{i}.adaln.*``,
  ``adaln_single.*``). A Qwen3 checkpoint has none: the model keeps their zero init, which makes it
  compute the pretrained function. Export keeps them as ``model.<name>`` (the names megadfm's HF
  modeling code loads), or drops them only if every modulation output is still exactly zero, the one
  case where a plain Qwen3ForCausalLM computes the same function.

The mask token's embedding row is not a separate key: the import sets it to the mean of the rows
before it (plan.py) and says so in its report. plan.py turns this table into the one conversion plan
(streamed by the tools, applied to a state dict in memory by in_memory.py); every conversion fails
on any missing or unexpected key or wrong shape, listing them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Tuple

from megadfm.checkpoints.strict_load import key_mismatches
from megadfm.model.config import ModelConfig

Shape = Tuple[int, ...]
HF_PREFIX = "model."


@dataclass(frozen=True)
class Entry:
    hf: str
    megadfm: str
    shape: Callable[[ModelConfig], Shape]
    when: Callable[[ModelConfig], bool] = lambda c: True


def _q(c: ModelConfig) -> int:
    return c.num_attention_heads * c.resolved_head_dim


def _kv(c: ModelConfig) -> int:
    return c.num_key_value_heads * c.resolved_head_dim


def _bias(c: ModelConfig) -> bool:
    return c.attention_bias


def _untied(c: ModelConfig) -> bool:
    return not c.tie_word_embeddings


NAME_MAP: Tuple[Entry, ...] = (
    Entry("model.embed_tokens.weight", "embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size)),
    Entry("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.self_attn.q_proj.weight", lambda c: (_q(c), c.hidden_size)),
    Entry("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.self_attn.k_proj.weight", lambda c: (_kv(c), c.hidden_size)),
    Entry("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.self_attn.v_proj.weight", lambda c: (_kv(c), c.hidden_size)),
    Entry("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.self_attn.o_proj.weight", lambda c: (c.hidden_size, _q(c))),
    Entry("model.layers.{i}.self_attn.q_proj.bias", "layers.{i}.self_attn.q_proj.bias", lambda c: (_q(c),), _bias),
    Entry("model.layers.{i}.self_attn.k_proj.bias", "layers.{i}.self_attn.k_proj.bias", lambda c: (_kv(c),), _bias),
    Entry("model.layers.{i}.self_attn.v_proj.bias", "layers.{i}.self_attn.v_proj.bias", lambda c: (_kv(c),), _bias),
    Entry("model.layers.{i}.self_attn.o_proj.bias", "layers.{i}.self_attn.o_proj.bias", lambda c: (c.hidden_size,), _bias),
    Entry("model.layers.{i}.self_attn.q_norm.weight", "layers.{i}.self_attn.q_norm.weight", lambda c: (c.resolved_head_dim,)),
    Entry("model.layers.{i}.self_attn.k_norm.weight", "layers.{i}.self_attn.k_norm.weight", lambda c: (c.resolved_head_dim,)),
    Entry("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    Entry("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    Entry("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.down_proj.weight", lambda c: (c.hidden_size, c.intermediate_size)),
    Entry("model.layers.{i}.input_layernorm.weight", "layers.{i}.input_layernorm.weight", lambda c: (c.hidden_size,)),
    Entry("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.post_attention_layernorm.weight", lambda c: (c.hidden_size,)),
    Entry("model.norm.weight", "norm.weight", lambda c: (c.hidden_size,)),
    Entry("lm_head.weight", "lm_head.weight", lambda c: (c.vocab_size, c.hidden_size), _untied),
)

HF_ONLY: Mapping[str, str] = {
    "lm_head.weight": "tied models only: an alias of model.embed_tokens.weight; must be equal on import, omitted on export",
}


def _six_h(c: ModelConfig) -> int:
    return 6 * c.hidden_size


MEGADFM_ONLY: Tuple[Tuple[str, Callable[[ModelConfig], Shape], Callable[[ModelConfig], bool]], ...] = (
    ("time_embedding.linear_1.weight", lambda c: (c.hidden_size, c.time_embedding_dim), lambda c: c.time_conditioning != "none"),
    ("time_embedding.linear_1.bias", lambda c: (c.hidden_size,), lambda c: c.time_conditioning != "none"),
    ("time_embedding.linear_2.weight", lambda c: (c.hidden_size, c.hidden_size), lambda c: c.time_conditioning != "none"),
    ("time_embedding.linear_2.bias", lambda c: (c.hidden_size,), lambda c: c.time_conditioning != "none"),
    ("layers.{i}.adaln.proj.weight", lambda c: (_six_h(c), c.hidden_size), lambda c: c.time_conditioning == "adaln"),
    ("layers.{i}.adaln.proj.bias", lambda c: (_six_h(c),), lambda c: c.time_conditioning == "adaln"),
    ("adaln_single.proj.weight", lambda c: (_six_h(c), c.hidden_size), lambda c: c.time_conditioning == "adaln_single"),
    ("adaln_single.proj.bias", lambda c: (_six_h(c),), lambda c: c.time_conditioning == "adaln_single"),
    ("layers.{i}.adaln.table", lambda c: (6, c.hidden_size), lambda c: c.time_conditioning == "adaln_single"),
)
"""Time-conditioning parameters: (megadfm name, shape, exists for this config). On the HF side they
are named ``model.<megadfm name>`` (megadfm's HF modeling code), never present in a Qwen3 checkpoint."""

MODULATION_OUTPUTS = ("layers.{i}.adaln.proj.weight", "layers.{i}.adaln.proj.bias", "adaln_single.proj.weight",
                      "adaln_single.proj.bias", "layers.{i}.adaln.table")
"""The zero-initialized time-conditioning parameters: while all are zero, t has no effect."""


class ConversionError(ValueError):
    """A state dict does not match the table for the given config; the message lists every problem."""


def _expand(name: str, cfg: ModelConfig) -> List[str]:
    return [name.format(i=i) for i in range(cfg.num_hidden_layers)] if "{i}" in name else [name]


def backbone_names(cfg: ModelConfig) -> Dict[str, Tuple[str, Shape]]:
    """HF name -> (megadfm name, shape) for every parameter both sides have, for this config."""
    out = {}
    for e in NAME_MAP:
        if e.when(cfg):
            for hf, ours in zip(_expand(e.hf, cfg), _expand(e.megadfm, cfg)):
                out[hf] = (ours, e.shape(cfg))
    return out


def time_conditioning_names(cfg: ModelConfig) -> Dict[str, Shape]:
    """megadfm name -> shape of every time-conditioning parameter of this config."""
    return {n: shape(cfg) for pattern, shape, when in MEGADFM_ONLY if when(cfg) for n in _expand(pattern, cfg)}


def check_shapes(shapes: Mapping[str, Shape], expected: Mapping[str, Shape], optional: Mapping[str, Shape], what: str) -> None:
    """Raise a ConversionError listing every missing, unexpected and mis-shaped name (names and shapes only)."""
    problems = key_mismatches(shapes, expected, optional)
    if problems:
        raise ConversionError(f"{what} does not match the config:\n  " + "\n  ".join(problems))


def modulation_output_names(cfg: ModelConfig) -> List[str]:
    """megadfm names of the zero-initialized modulation outputs of this config (t has no effect while all are zero)."""
    return [n for pattern in MODULATION_OUTPUTS for n in _expand(pattern, cfg) if n in time_conditioning_names(cfg)]
