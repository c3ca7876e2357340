"""The run configuration: one typed dataclass per section, loaded from YAML plus ``--set`` overrides.

    cfg = load_config("examples/tiny_cpu.yaml", overrides=["training.lr=1e-3"])
    dump_config(cfg, "resolved.yaml")       # re-reads to an equal object

Unknown keys, wrong types and impossible values raise :class:`ConfigError` naming the dotted key,
the file (or the ``--set`` flag) it came from and what is expected. Cross-section checks (e.g.
``data.seq_len`` against ``model.max_position_embeddings``) live in :meth:`MegaDFMConfig.__post_init__`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import yaml

from megadfm.io_utils import write_text_atomic
from megadfm.config_base import ConfigError, build, describe, doc, load_yaml_unique, require, to_dict
from megadfm.data.config import BlendSource, DataConfig
from megadfm.dfm.config import DFMConfig
from megadfm.model.config import ModelConfig
from megadfm.training.config import CheckpointConfig, TrainingConfig
from megadfm.training.telemetry.config import TelemetryConfig
from megadfm.eval.config import EvalConfig

__all__ = [
    "BlendSource", "CheckpointConfig", "ConfigError", "DataConfig", "DFMConfig", "EvalConfig", "MegaDFMConfig", "ModelConfig",
    "TelemetryConfig", "TrainingConfig", "describe", "dump_config", "load_config", "parse_overrides",
]


@dataclass
class MegaDFMConfig:
    """Everything one training run needs. Saved (resolved) into every checkpoint."""

    model: ModelConfig = doc(help="Model shape, attention mode, time conditioning, kernels.", factory=ModelConfig)
    dfm: DFMConfig = doc(help="Probability path, t sampling, loss weighting, shift convention.", factory=DFMConfig)
    data: DataConfig = doc(help="Tokenizer, indexed datasets and their blend, packing.", factory=DataConfig)
    training: TrainingConfig = doc(help="Optimiser, schedule, batch sizes, DeepSpeed engine.", factory=TrainingConfig)
    telemetry: TelemetryConfig = doc(help="Per-mask-ratio-bucket loss telemetry, spike detection, sinks.", factory=TelemetryConfig)
    checkpoint: CheckpointConfig = doc(help="Checkpoint interval, retention and resume.", factory=CheckpointConfig)
    eval: EvalConfig = doc(help="Evaluation during training: which tasks, how often, which pinned sampler.", factory=EvalConfig)

    def __post_init__(self) -> None:
        require(self.data.seq_len <= self.model.max_position_embeddings, "data.seq_len",
                f"{self.data.seq_len} exceeds model.max_position_embeddings={self.model.max_position_embeddings}")
        require(self.data.eod_token_id < self.model.vocab_size, "data.eod_token_id",
                f"{self.data.eod_token_id} is outside the vocabulary [0, {self.model.vocab_size})")
        require(self.data.pad_token_id < self.model.vocab_size, "data.pad_token_id",
                f"{self.data.pad_token_id} is outside the vocabulary [0, {self.model.vocab_size})")
        # CoDA's suffix truncation cuts a row at a random point: in an SFT row that can fall inside the
        # prompt or drop the response's end-of-turn, so the example would teach a cut answer
        require(self.data.format != "sft" or self.dfm.truncate_suffix_prob == 0.0, "dfm.truncate_suffix_prob",
                f"must be 0 with data.format: sft (got {self.dfm.truncate_suffix_prob}): a cut SFT row loses its "
                "response's end or its prompt")
        require(self.dfm.attention_anneal_steps == 0 or (self.model.attention_mode == "bidirectional"
                                                         and self.dfm.objective == "dfm"), "dfm.attention_anneal_steps",
                "anneals a model towards bidirectional attention: needs model.attention_mode: bidirectional and "
                f"dfm.objective: dfm (got {self.model.attention_mode}, {self.dfm.objective})")
        require(self.dfm.objective != "ar" or self.model.attention_mode == "causal", "model.attention_mode",
                f"must be causal with dfm.objective: ar (a bidirectional model would see the token it predicts), got "
                f"{self.model.attention_mode}")
        require(self.dfm.loss_normalizer != "response_length" or self.data.format == "sft", "dfm.loss_normalizer",
                "response_length divides by each row's response tokens and needs data.format: sft (prompt_mask)")


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any, flag: str, origins: Dict[str, str]) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if part not in node:  # a section the flag created (maybe a typo): its errors belong to the flag, not the file
            origins[".".join(parts[: i + 1])] = flag
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not a section, cannot set a sub-key", flag)
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> List[tuple]:
    """``["a.b=3", "c.d=[1, 2]"]`` -> ``[("a.b", 3, "--set a.b=3"), ...]``; values are parsed as YAML."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like section.key=value", f"--set {item}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(item, "empty key in override", f"--set {item}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(key, f"value {raw!r} is not valid YAML: {e}", f"--set {item}") from None
        parsed.append((key, value, f"--set {item}"))
    return parsed


def _origins_of(tree: Any, prefix: str, source: str, out: Dict[str, str]) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out[key] = source
            _origins_of(v, key, source, out)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> MegaDFMConfig:
    """Read ``path`` (YAML; None for defaults), apply ``--set`` overrides, validate everything."""
    tree: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    source = str(path) if path else "<defaults>"
    if path:
        if not os.path.isfile(path):
            raise ConfigError("<file>", f"config file not found: {path}", str(path))
        with open(path, encoding="utf-8") as f:
            try:
                loaded = load_yaml_unique(f, str(path))
            except yaml.YAMLError as e:
                raise ConfigError("<file>", f"not valid YAML: {e}", str(path)) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("<file>", f"top level must be a mapping of sections, got {type(loaded).__name__}", str(path))
        tree = loaded
        _origins_of(tree, "", source, origins)
    for key, value, flag in parse_overrides(overrides):
        _set_dotted(tree, key, value, flag, origins)
        origins[key] = flag
        _origins_of(value, key, flag, origins)
    return build(MegaDFMConfig, tree, "", origins, source)


def config_to_yaml(cfg: MegaDFMConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def dump_config(cfg: MegaDFMConfig, path: str) -> None:
    """Write the resolved config atomically (temporary name, then rename)."""
    write_text_atomic(path, config_to_yaml(cfg))
