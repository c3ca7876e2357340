"""The one declarative HF Qwen3 <-> megadfm parameter-name table, and the state-dict converters.

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

The mask token's embedding row is not a separate key: ``hf_to_megadfm_state_dict`` sets it to the
mean of the rows before it (``init_mask_row``; see ``Qwen3DFM.init_mask_embedding``) and says so in
its report. Every converter fails on any missing or unexpected key or wrong shape, listing them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, List, Mapping, Tuple

import torch

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


def _check(sd: Mapping[str, Any], expected: Mapping[str, Shape], optional: Mapping[str, Shape], what: str) -> None:
    check_shapes({k: tuple(v.shape) for k, v in sd.items()}, expected, optional, what)


def check_shapes(shapes: Mapping[str, Shape], expected: Mapping[str, Shape], optional: Mapping[str, Shape], what: str) -> None:
    """Raise a ConversionError listing every missing, unexpected and mis-shaped name (names and shapes only)."""
    problems = []
    missing = sorted(k for k in expected if k not in shapes)
    unexpected = sorted(k for k in shapes if k not in expected and k not in optional)
    wrong = [f"{k}: got {tuple(shapes[k])}, expected {tuple(shape)}" for k, shape in {**expected, **optional}.items()
             if k in shapes and tuple(shapes[k]) != tuple(shape)]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}): {wrong}")
    if problems:
        raise ConversionError(f"{what} does not match the config:\n  " + "\n  ".join(problems))


def hf_to_megadfm_state_dict(hf_sd: Mapping[str, torch.Tensor], cfg: ModelConfig,
                             init_mask_row: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """HF Qwen3 (``model.*`` + ``lm_head.weight``) state dict -> (megadfm state dict, report).

    Tensors are passed through (not copied), except the embedding when ``init_mask_row`` sets its
    mask row to the mean of the rows before it. Time-conditioning keys (``model.time_embedding.*``
    ...) are accepted only as a complete set (a model exported by megadfm); if absent, the report
    says the model keeps its zero init.
    """
    from megadfm.model.qwen3_dfm import mask_embedding_init_

    table = backbone_names(cfg)
    expected = {hf: shape for hf, (_, shape) in table.items()}
    time_hf = {HF_PREFIX + n: shape for n, shape in time_conditioning_names(cfg).items()}
    optional = dict(time_hf)
    if cfg.tie_word_embeddings:
        optional["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    _check(hf_sd, expected, optional, "HF Qwen3 state dict")
    report: Dict[str, Any] = {"mapped": len(table)}
    if cfg.tie_word_embeddings and "lm_head.weight" in hf_sd:
        if not torch.equal(hf_sd["lm_head.weight"], hf_sd["model.embed_tokens.weight"]):
            raise ConversionError("config says tie_word_embeddings=true but lm_head.weight differs from "
                                  "model.embed_tokens.weight; the checkpoint is untied")
        report["dropped"] = ["lm_head.weight (tied alias of model.embed_tokens.weight)"]
    sd = {ours: hf_sd[hf] for hf, (ours, _) in table.items()}
    present = [k for k in time_hf if k in hf_sd]
    if present and len(present) != len(time_hf):
        raise ConversionError(f"partial time conditioning: missing {sorted(set(time_hf) - set(present))}")
    for k in present:
        sd[k[len(HF_PREFIX):]] = hf_sd[k]
    report["time_conditioning"] = ("imported" if present else
                                   "absent: the model keeps its zero-initialized modulation (exactly the pretrained function)")
    if init_mask_row:
        emb = sd["embed_tokens.weight"].detach().clone()
        mask_embedding_init_(emb, cfg.mask_token_id)
        sd["embed_tokens.weight"] = emb
        report["mask_row"] = f"embed_tokens.weight[{cfg.mask_token_id}] = mean of rows 0..{cfg.mask_token_id - 1}"
    else:
        report["mask_row"] = "kept as in the checkpoint"
    return sd, report


def megadfm_to_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, time_conditioning: str = "keep") -> Dict[str, torch.Tensor]:
    """megadfm state dict -> HF names (the inverse of NAME_MAP); a tied head is omitted.

    ``time_conditioning``: 'keep' exports it as ``model.<name>`` (for megadfm's HF modeling code);
    'drop' omits it, allowed only while every modulation output is exactly zero (then a plain
    Qwen3ForCausalLM computes the same function), otherwise a ConversionError names the nonzero ones.
    """
    if time_conditioning not in ("keep", "drop"):
        raise ValueError(f"time_conditioning must be 'keep' or 'drop', got {time_conditioning!r}")
    table = backbone_names(cfg)
    time_names = time_conditioning_names(cfg)
    expected = {ours: shape for ours, shape in table.values()}
    expected.update(time_names)
    _check(sd, expected, {}, "megadfm state dict")
    out = {hf: sd[ours] for hf, (ours, _) in table.items()}
    if time_conditioning == "keep":
        out.update({HF_PREFIX + n: sd[n] for n in time_names})
    else:
        outputs = {n for pattern in MODULATION_OUTPUTS for n in _expand(pattern, cfg)}
        nonzero = sorted(n for n in time_names if n in outputs and bool(sd[n].detach().ne(0).any()))
        if nonzero:
            raise ConversionError("cannot drop time conditioning: these modulation outputs are trained (nonzero), so a "
                                  f"plain Qwen3 would compute a different function: {nonzero}")
    return out


# ---- name/shape plans (for streaming converters that never hold a whole state dict) ------------

@dataclass
class ConversionPlan:
    """Which source tensor becomes which output tensor, checked against the table before any data is read.

    ``rename``: source name -> output name, in source order; ``added``: output names that do not
    exist in the source (created by the converter, with their shapes); ``dropped``: source names
    left out, each with the reason.
    """

    rename: Dict[str, str]
    added: Dict[str, Shape]
    dropped: Dict[str, str]

    def report(self) -> Dict[str, Any]:
        return {"mapped": len(self.rename), "added": sorted(self.added), "dropped": dict(sorted(self.dropped.items()))}

    def summary(self, limit: int = 4) -> str:
        """One line for the log: counts, and the first added / dropped names."""
        def names(keys):
            keys = sorted(keys)
            return (": " + ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")) if keys else ""
        return f"mapped {len(self.rename)}; added {len(self.added)}{names(self.added)}; dropped {len(self.dropped)}{names(self.dropped)}"


def hf_import_plan(hf_shapes: Mapping[str, Shape], cfg: ModelConfig) -> ConversionPlan:
    """The plan of :func:`hf_to_megadfm_state_dict` from names and shapes only.

    Time conditioning present in the source (a megadfm export) is mapped as a complete set; absent,
    its megadfm names are ``added`` (the converter creates them, zero modulation). A tied
    ``lm_head.weight`` is ``dropped``: the caller must check it equals the embedding.
    """
    table = backbone_names(cfg)
    time_hf = {HF_PREFIX + n: shape for n, shape in time_conditioning_names(cfg).items()}
    optional = dict(time_hf)
    if cfg.tie_word_embeddings:
        optional["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
    check_shapes(hf_shapes, {hf: shape for hf, (_, shape) in table.items()}, optional, "HF Qwen3 checkpoint")
    present = [k for k in time_hf if k in hf_shapes]
    if present and len(present) != len(time_hf):
        raise ConversionError(f"partial time conditioning: missing {sorted(set(time_hf) - set(present))}")
    rename, dropped = {}, {}
    for name in hf_shapes:
        if name in table:
            rename[name] = table[name][0]
        elif name in time_hf:
            rename[name] = name[len(HF_PREFIX):]
        else:  # only the tied head is left (check_shapes let nothing else through)
            dropped[name] = HF_ONLY[name]
    added = {} if present else time_conditioning_names(cfg)
    return ConversionPlan(rename, added, dropped)


def hf_export_plan(shapes: Mapping[str, Shape], cfg: ModelConfig, time_conditioning: str = "keep") -> ConversionPlan:
    """The plan of :func:`megadfm_to_hf_state_dict` from names and shapes only. With
    ``time_conditioning='drop'`` the time-conditioning names are ``dropped``; the caller must first
    check :func:`modulation_output_names` are all exactly zero (see megadfm_to_hf_state_dict)."""
    if time_conditioning not in ("keep", "drop"):
        raise ValueError(f"time_conditioning must be 'keep' or 'drop', got {time_conditioning!r}")
    table = backbone_names(cfg)
    time_names = time_conditioning_names(cfg)
    expected = {ours: shape for ours, shape in table.values()}
    expected.update(time_names)
    check_shapes(shapes, expected, {}, "megadfm state dict")
    to_hf = {ours: hf for hf, (ours, _) in table.items()}
    rename, dropped = {}, {}
    for name in shapes:
        if name in to_hf:
            rename[name] = to_hf[name]
        elif time_conditioning == "keep":
            rename[name] = HF_PREFIX + name
        else:
            dropped[name] = "time conditioning with zero modulation (a plain Qwen3 computes the same function)"
    return ConversionPlan(rename, {}, dropped)


def modulation_output_names(cfg: ModelConfig) -> List[str]:
    """megadfm names of the zero-initialized modulation outputs of this config (t has no effect while all are zero)."""
    return [n for pattern in MODULATION_OUTPUTS for n in _expand(pattern, cfg) if n in time_conditioning_names(cfg)]


# ---- config ------------------------------------------------------------------------------------

_CONFIG_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                  "attention_bias", "initializer_range")


def model_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """A Qwen3 ``config.json`` (as a dict) -> ModelConfig; ``overrides`` set megadfm-only fields
    (attention_mode, time_conditioning, kernels, ...). Anything the model does not implement is
    rejected by name rather than silently ignored."""
    model_type = hf_config.get("model_type")
    if model_type != "qwen3":
        raise ConversionError(f"config.json model_type is {model_type!r}; megadfm converts Qwen3 dense models only "
                              "(model_type 'qwen3')")
    problems = []
    if hf_config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf_config['hidden_act']!r} (only 'silu' / SwiGLU is implemented)")
    if hf_config.get("use_sliding_window"):
        problems.append("use_sliding_window=true (sliding-window attention is not implemented)")
    if float(hf_config.get("attention_dropout", 0.0) or 0.0) != 0.0:
        problems.append(f"attention_dropout={hf_config['attention_dropout']} (attention dropout is not implemented)")
    rope = hf_config.get("rope_parameters") or {}
    scaling = hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (only the default RoPE is implemented)")
    theta = rope.get("rope_theta", hf_config.get("rope_theta"))
    if theta is None:
        problems.append("no rope_theta (neither top-level nor in rope_parameters)")
    missing = [k for k in _CONFIG_FIELDS if k not in hf_config and k not in ("head_dim", "attention_bias", "initializer_range")]
    if missing:
        problems.append(f"missing fields {missing}")
    if problems:
        raise ConversionError("unsupported Qwen3 config: " + "; ".join(problems))
    kwargs = {k: hf_config[k] for k in _CONFIG_FIELDS if k in hf_config and hf_config[k] is not None}
    kwargs["rope_theta"] = float(theta)
    if "mask_token_id" in hf_config:  # written by hf_config_from_model_config; absent from Qwen3's own config.json
        kwargs["mask_token_id"] = hf_config["mask_token_id"]
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConversionError(f"unknown ModelConfig override(s) {unknown}; valid: {sorted(known)}")
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def hf_config_from_model_config(cfg: ModelConfig) -> Dict[str, Any]:
    """The Qwen3 ``config.json`` fields for export (the inverse of model_config_from_hf on shared fields)."""
    out: Dict[str, Any] = {k: getattr(cfg, k) for k in _CONFIG_FIELDS}
    out["head_dim"] = cfg.resolved_head_dim
    out.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], hidden_act="silu", rope_theta=cfg.rope_theta,
               rope_scaling=None, use_sliding_window=False, attention_dropout=0.0, mask_token_id=cfg.mask_token_id)
    return out

