"""Configuration of optimisation, the DeepSpeed engine and checkpointing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional

from megadfm.config_base import doc, require


LR_RULE_GROUPS = ("embeddings", "backbone", "head", "time_conditioning")


@dataclass
class LRMultiplierRule:
    """One learning-rate multiplier for the parameters it matches (training.lr_multipliers; first match wins)."""

    multiplier: float = doc(help="Factor on training.lr (and on the schedule) for the matched parameters, > 0.")
    group: Optional[str] = doc(None, "Parameter group the rule applies to: embeddings, backbone, head or time_conditioning "
                                     "(null: any).")
    layers: Optional[List[int]] = doc(None, "[first, last] decoder layer indices, inclusive: only parameters under "
                                            "layers.N. with first <= N <= last (null: any layer, and non-layer parameters).")
    match: Optional[str] = doc(None, "Substring the parameter name must contain, e.g. mlp, self_attn, adaln (null: any).")

    def __post_init__(self) -> None:
        require(self.multiplier > 0, "multiplier", f"must be positive, got {self.multiplier}")
        require(self.group is None or self.group in LR_RULE_GROUPS, "group",
                f"unknown group {self.group!r}; allowed: {', '.join(LR_RULE_GROUPS)} (or null)")
        if self.layers is not None:
            require(len(self.layers) == 2 and 0 <= self.layers[0] <= self.layers[1], "layers",
                    f"must be [first, last] with 0 <= first <= last, got {self.layers}")

    def describe(self) -> str:
        parts = [self.group or "any group"]
        if self.layers is not None:
            parts.append(f"layers {self.layers[0]}-{self.layers[1]}")
        if self.match:
            parts.append(f"'{self.match}'")
        return " ".join(parts)


@dataclass
class TrainingConfig:
    """Optimiser, schedule, batch arithmetic and the DeepSpeed engine."""

    output_dir: str = doc("runs/default", "Run directory: checkpoints, telemetry JSONL, W&B and the resolved config go here.")
    train_steps: int = doc(200, "Optimizer steps to run.")
    micro_batch_size: int = doc(4, "Sequences per rank per forward/backward.")
    grad_accum_steps: int = doc(1, "Micro-batches accumulated per optimizer step.")
    global_batch_size: Optional[int] = doc(
        None, "Sequences per optimizer step; checked to equal micro_batch_size x grad_accum_steps x data-parallel size (null: derived).")
    lr: float = doc(3e-4, "Peak learning rate.")
    min_lr: float = doc(3e-5, "Final learning rate of the cosine/linear decay.")
    lr_schedule: Literal["cosine", "linear", "constant"] = doc("cosine", "Decay after warmup.")
    warmup_steps: int = doc(20, "Linear warmup from 0 to lr.")
    weight_decay: float = doc(0.1, "AdamW decoupled weight decay (not applied to norms, biases, embeddings).")
    adam_beta1: float = doc(0.9, "AdamW beta1.")
    adam_beta2: float = doc(0.95, "AdamW beta2.")
    adam_eps: float = doc(1e-8, "AdamW epsilon.")
    grad_clip: float = doc(1.0, "Clip the global gradient norm to this value (0 disables).")
    time_conditioning_lr_mult: float = doc(1.0, "LR multiplier for the time-conditioning parameter group.")
    lr_multipliers: List[LRMultiplierRule] = doc(
        help="Layer-wise LR multipliers (e.g. a lower rate for the pretrained FFN weights when adapting an AR model, as "
             "RND1 describes): rules by group, layer range and name substring; the first matching rule gives a parameter's "
             "factor (times time_conditioning_lr_mult for that group). Every rule must match a parameter. Each distinct "
             "factor is its own optimizer group, logged at start-up with its lr.", factory=list)
    seed: int = doc(1234, "Seed of model init, t sampling and masking (per rank offset added).")
    zero_stage: int = doc(3, "DeepSpeed ZeRO stage 0-3.")
    ds_config: str = doc("ds_configs/cpu_zero3.json", "DeepSpeed JSON config; batch sizes and optimizer fields are filled from this YAML.")
    precision: Literal["fp32", "bf16"] = doc("fp32", "fp32 on CPU; bf16 on GPU.")
    zero_init: bool = doc(True, "With ZeRO-3, build the model under deepspeed.zero.Init so no rank ever holds all parameters "
                          "(false: each rank builds the whole model, and DeepSpeed partitions it at start-up).")
    host_mmap_threshold_kib: int = doc(
        64, "glibc's mmap threshold for host allocations, fixed at start-up, so that freed tensors go back to the OS instead "
            "of staying resident in malloc's heaps (2.2 GiB per rank at the 0.6B shape on CPU; docs/MEMORY.md). 0: glibc's "
            "dynamic default. Not glibc: ignored, with a log line.")
    init_from: Optional[str] = doc(None, "null: from scratch; a folder made by tools/convert_hf_to_megadfm.py; or a megadfm checkpoint dir.")
    exit_after_steps: Optional[int] = doc(
        None, "Stop this invocation (with a checkpoint) once this many optimizer steps have run in total, as Megatron's --exit-interval; the schedule still spans train_steps.")
    log_interval: int = doc(10, "Optimizer steps between log lines / telemetry flushes.")
    eval_interval: int = doc(100, "Optimizer steps between validation passes (0 disables).")
    eval_batches: int = doc(4, "Batches per validation pass.")
    step_log: bool = doc(True, "Write RUN_DIR/telemetry/train_steps.jsonl: one line per optimizer step with the exact loss, lr, grad norm "
                         "and a hash of the global batch's sample indices (what exact-resume checks compare; costs one small "
                         "all_gather per step).")
    nonfinite_policy: Literal["stop", "skip"] = doc("stop", "On NaN/Inf loss or grad norm: save the last good state and stop, or skip the step.")

    def __post_init__(self) -> None:
        for name in ("train_steps", "micro_batch_size", "grad_accum_steps", "log_interval"):
            require(getattr(self, name) > 0, name, f"must be a positive integer, got {getattr(self, name)}")
        require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1",
                f"betas must be in [0, 1), got ({self.adam_beta1}, {self.adam_beta2})")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(self.time_conditioning_lr_mult > 0, "time_conditioning_lr_mult", f"must be positive, got {self.time_conditioning_lr_mult}")
        require(self.zero_stage in (0, 1, 2, 3), "zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        require(0 <= self.host_mmap_threshold_kib <= 32768, "host_mmap_threshold_kib",
                f"must be in [0, 32768] (glibc's limit on 64-bit), got {self.host_mmap_threshold_kib}")
        require(self.eval_interval >= 0, "eval_interval", f"must be >= 0, got {self.eval_interval}")
        if self.global_batch_size is not None:
            require(self.global_batch_size > 0, "global_batch_size", f"must be positive, got {self.global_batch_size}")


@dataclass
class CheckpointConfig:
    """When and where checkpoints are written, how many are kept, how runs resume."""

    save_interval: int = doc(100, "Optimizer steps between checkpoints (0: only at the end).")
    keep_last: int = doc(2, "Keep the newest N complete checkpoints.")
    keep_every: Optional[int] = doc(None, "Additionally keep every checkpoint whose step is a multiple of this.")
    resume: bool = doc(True, "Resume from the newest complete checkpoint in output_dir/checkpoints if there is one.")
    min_free_bytes: int = doc(0, "Refuse to save (cleanly) when the disk would have less than this free after the save.")
    verify: Literal["sha256", "size"] = doc(
        "sha256", "How a resume checks a checkpoint against its manifest before loading it: sha256 re-reads and hashes "
        "every file; size only compares file sizes (for runs whose checkpoints are too large to read twice). A "
        "checkpoint that fails is renamed to .corrupt-<tag> and the next newest is used.")
    allow_changes: List[str] = doc(
        help="Dotted keys (e.g. data.seq_len, model.rope_theta, data.tokenizer, training.global_batch_size) a resume may "
             "change although the checkpoint was trained under other values; each accepted change is logged. Without "
             "it a resume that changes the model's function or the data stream is refused, listing every such key "
             "(megadfm/training/provenance.py). LR, steps, intervals, sinks and output paths may always change.",
        factory=list)

    def __post_init__(self) -> None:
        require(self.save_interval >= 0, "save_interval", f"must be >= 0, got {self.save_interval}")
        require(self.keep_last >= 1, "keep_last", f"must be >= 1 (the latest checkpoint is always kept), got {self.keep_last}")
        if self.keep_every is not None:
            require(self.keep_every > 0, "keep_every", f"must be positive, got {self.keep_every}")
        require(self.min_free_bytes >= 0, "min_free_bytes", f"must be >= 0, got {self.min_free_bytes}")
