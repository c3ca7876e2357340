"""The DeepSpeed trainer core: builds model, optimizer and engine, resumes, and takes optimizer steps.

Everything else -- telemetry, the step log, throughput, validation, checkpointing, the spike and
non-finite policy -- is a callback (megadfm/training/callbacks/), called at fixed hooks in a fixed
order on every rank.

Noise is keyed, not stateful: the t of every sequence and its corruption mask are drawn from seeds
derived from (training.seed, optimizer step, the sequence's position in the global batch). A run
resumed at step k therefore sees exactly the t and masks an uninterrupted run would, and a run on
another data-parallel world size (same global batch) sees the same ones too.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Sequence

import torch
import torch.distributed as dist

from megadfm.checkpoints.layout import CHECKPOINTS_DIR, RUN_CONFIG_FILE
from megadfm.config import MegaDFMConfig, dump_config
from megadfm.dfm.loss import DFMLossOutput
from megadfm.dfm.schedulers import make_scheduler
from megadfm.dfm.time_sampling import sample_times, step_seed
from megadfm.model.qwen3_dfm import Qwen3DFM
from megadfm.training.callbacks import Callback, CallbackList, MicroBatch, StepState, default_callbacks
from megadfm.training.checkpoint import CheckpointManager
from megadfm.training.ds_config import build_ds_config
from megadfm.training.grad_norms import compute_grad_norms
from megadfm.training.lr_schedule import lr_multiplier
from megadfm.training.host_allocator import set_mmap_threshold
from megadfm.training.memory import MemoryPhases, memory_log_path
from megadfm.training.zero_memory import share_fp32_master_partitions
from megadfm.training.optim import build_optimizer
from megadfm.training.provenance import check_data_provenance, check_resume_provenance
from megadfm.training.train_module import DFMTrainingModule
from megadfm.training.training_data import TrainingData

logger = logging.getLogger("megadfm")

EXIT_STOPPED = 3
"""Exit status of a run stopped by the step policy (non-finite loss, or a spike with action stop)."""
EXIT_SAVE_FAILED = 4
"""Exit status of a run whose checkpoint save failed, or whose final save was refused for lack of disk space."""

DataFactory = Callable[[MegaDFMConfig, int, int, int], Any]
"""(config, rank, world size, consumed samples) -> the trainer's data source (TrainingData's interface)."""


class TrainingStopped(RuntimeError):
    """The step policy stopped the run; the message says why and what to do."""


def training_noise(cfg: MegaDFMConfig, scheduler, step: int, global_offset: int, n: int, global_batch: int,
                   device: torch.device):
    """(t [n], corruption generator) for the n sequences at ``global_offset`` of the global batch of
    optimizer step ``step`` (0-based). A function of those numbers only: resumes and other world
    sizes reproduce it exactly."""
    t = sample_times(n, cfg.dfm, scheduler, global_batch_size=global_batch, rank_offset=global_offset,
                     seed=step_seed(cfg.training.seed, step), device=device)
    gen = torch.Generator(device=device).manual_seed(step_seed(cfg.training.seed, step, 1 + global_offset))
    return t, gen


class Trainer:
    def __init__(self, cfg: MegaDFMConfig, rank: int, world_size: int, callbacks: Sequence[Callback] = (),
                 data_factory: DataFactory = TrainingData):
        """``callbacks`` run after the built-in ones (megadfm.training.callbacks.default_callbacks);
        ``data_factory`` builds the data source once the resume position is known."""
        import deepspeed

        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        tcfg = cfg.training
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
        self.ds_config = build_ds_config(tcfg, world_size)
        self.global_batch = self.ds_config["train_batch_size"]
        self.out_dir = tcfg.output_dir
        if rank == 0:
            os.makedirs(self.out_dir, exist_ok=True)
        logger.info("megadfm run %s: world size %d (%s, backend %s), ZeRO stage %d, precision %s, "
                    "global batch %d = micro %d x accumulation %d x data-parallel %d, seq_len %d",
                    self.out_dir, world_size, self.device.type, dist.get_backend(), tcfg.zero_stage, tcfg.precision,
                    self.global_batch, tcfg.micro_batch_size, tcfg.grad_accum_steps, world_size, cfg.data.seq_len)

        self.scheduler = make_scheduler(cfg.dfm)
        set_mmap_threshold(tcfg.host_mmap_threshold_kib)  # before anything large is allocated
        # peak and level of every start-up phase, logged and kept in telemetry/ (megadfm/training/memory.py)
        self.memory = MemoryPhases(self.device, memory_log_path(self.out_dir, rank))
        self.memory.mark("imports")  # Python, torch, DeepSpeed and the process group: the runtime before any model
        model = self._build_model(deepspeed)
        self.module = DFMTrainingModule(model, cfg.dfm, self.scheduler, cfg.data.pad_token_id)
        if tcfg.zero_stage == 3:
            self.module.register_zero3_external_parameters()
        self.ckpt = CheckpointManager(os.path.join(self.out_dir, CHECKPOINTS_DIR), cfg.checkpoint, rank, world_size)
        resume_from = self.ckpt.latest_step() if cfg.checkpoint.resume else None
        # before anything is loaded or rewritten: a changed config or foreign data is refused, not met mid-run
        check_resume_provenance(cfg, self.ckpt, resume_from, self.global_batch)
        check_data_provenance(cfg)
        if rank == 0:  # only now: a refused resume leaves the run's config.yaml as it was
            dump_config(cfg, os.path.join(self.out_dir, RUN_CONFIG_FILE))
        if resume_from is not None and self.ckpt.needs_universal(resume_from):
            self.ckpt.prepare_universal(resume_from)
            self.ds_config["checkpoint"] = {"load_universal": True}
        optimizer = build_optimizer(self.module, tcfg, self.module.parameter_group)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, tcfg))
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=lr_sched, config=self.ds_config)
        if tcfg.zero_stage == 3:
            share_fp32_master_partitions(self.engine.optimizer)
        self.memory.mark("engine initialised")

        self.step = 0
        self.consumed_samples = 0
        self.callbacks = CallbackList(default_callbacks(self) + list(callbacks))
        if resume_from is not None:
            self._resume(resume_from)
            self.memory.mark("checkpoint resumed")
        self.data = data_factory(cfg, rank, world_size, self.consumed_samples)

    # ---- set-up --------------------------------------------------------------------------------
    def _build_model(self, deepspeed) -> Qwen3DFM:
        cfg, tcfg = self.cfg, self.cfg.training
        mcfg = cfg.model
        if tcfg.precision == "bf16" and mcfg.dtype != "bfloat16":
            logger.info("model.dtype float32 kept for master weights; DeepSpeed bf16 casts the module")
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, enabled=tcfg.zero_stage == 3 and tcfg.zero_init):
            model = Qwen3DFM(mcfg, seed=tcfg.seed)
        self.memory.mark("model built")
        if mcfg.activation_checkpointing:
            logger.info("activation checkpointing: on (every block recomputed in backward)")
        src = tcfg.init_from
        if src is None:
            logger.info("initialisation: from scratch (seed %d)", tcfg.seed)
        else:
            from megadfm.checkpoints.source import open_source
            from megadfm.checkpoints.strict_load import check_architecture, load_source

            source = open_source(src)  # an init folder, a model folder, a run dir, its checkpoints/ or one step dir
            what = (f"megadfm checkpoint (step {source.step})" if source.step is not None
                    else {"init_folder": "megadfm init folder", "model_dir": "megadfm model folder"}[source.kind])
            logger.info("initialisation: %s %s", what, source.path)
            check_architecture(source.model_config, mcfg, source.path)
            load_source(model, source)
            self.memory.mark("init_from loaded")
        from megadfm.checkpoints.strict_load import fingerprint

        fp = fingerprint(model)
        logger.info("weights fingerprint: %s", ", ".join(f"{k}={v:.6g}" for k, v in fp.items()))
        self.weights_fingerprint = fp
        return model

    def _resume(self, step: int) -> None:
        loaded = self.ckpt.load_newest(self.engine, step)  # falls back past checkpoints that fail to load
        state = loaded.client_state
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        self.callbacks.load_state_dict(state.get("callbacks", {}))
        logger.info("resumed from %s: step %d, %d samples consumed", loaded.path, self.step, self.consumed_samples)

    # ---- one optimizer step --------------------------------------------------------------------
    def _micro_offset(self, micro: int) -> int:
        """Position of this rank's micro-batch in the global batch (data is laid out the same way)."""
        mbs = self.cfg.training.micro_batch_size
        return micro * mbs * self.world_size + self.rank * mbs

    def forward(self, batch: Dict[str, torch.Tensor], t: torch.Tensor, generator: torch.Generator) -> DFMLossOutput:
        """The DFM objective through the engine (training and validation share it)."""
        return DFMLossOutput(**self.engine(batch, t, generator))

    def train_step(self) -> StepState:
        tcfg = self.cfg.training
        state = StepState(step=self.step + 1, started=time.time())  # the step being completed, counting from 1
        self.engine.train()
        self.callbacks.call("pre_step", self, state)
        losses = []
        for micro in range(tcfg.grad_accum_steps):
            batch = self.data.next_train_batch(self.device)
            offset = self._micro_offset(micro)
            t, gen = training_noise(self.cfg, self.scheduler, self.step, offset, batch["input_ids"].shape[0],
                                    self.global_batch, self.device)
            mb = MicroBatch(step=state.step, micro=micro, global_offset=offset, batch=batch, out=self.forward(batch, t, gen))
            self.callbacks.call("post_forward", self, mb)
            self.engine.backward(mb.out.loss)
            self.callbacks.call("post_micro_batch", self, mb)
            losses.append(mb.out.loss.detach())
            state.tokens += int(batch["loss_mask"].sum())
            if micro < tcfg.grad_accum_steps - 1:
                self.engine.step()  # DeepSpeed only counts the micro-step before the boundary
        loss = torch.stack(losses).mean().double().cpu()
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world_size
        state.loss = float(loss)
        state.grad_norms = compute_grad_norms(self.engine, self.module.parameter_group, clip=tcfg.grad_clip)
        state.lr = self.lr_scheduler.get_last_lr()[0]
        self.callbacks.call("pre_optim_step", self, state)
        if state.abort:
            raise TrainingStopped(state.abort)
        if state.skip_update:
            logger.warning("step %d: update skipped (%s)", state.step, state.skip_reason)
            self._drop_update()
        self.engine.step()
        self.step = state.step
        self.consumed_samples += self.global_batch
        self.callbacks.call("post_step", self, state)
        if state.stop:
            raise TrainingStopped(state.stop)
        return state

    def _drop_update(self) -> None:
        """A dropped update, as megadfm/training/callbacks/step_policy.py describes it: gradients and LR zeroed."""
        from deepspeed.utils import safe_get_full_grad, safe_get_local_grad, safe_set_full_grad, safe_set_local_grad

        for p in self.module.parameters():
            if hasattr(p, "ds_id"):  # ZeRO-3: this rank's partition
                g = safe_get_local_grad(p)
                if g is not None:
                    safe_set_local_grad(p, torch.zeros_like(g))
            elif p.grad is not None:  # ZeRO-0: plain .grad
                p.grad.zero_()
            else:  # ZeRO-1/2: the fragment this rank owns
                g = safe_get_full_grad(p)
                if g is not None:
                    safe_set_full_grad(p, torch.zeros_like(g))
        # the LambdaLR scheduler puts every group's LR back at the engine.step() that follows
        for g in self.optimizer.param_groups:
            g["lr"] = 0.0

    # ---- the loop ------------------------------------------------------------------------------
    def train(self) -> int:
        """The exit status: 0, EXIT_STOPPED, or EXIT_SAVE_FAILED when a save failed or the final one was
        refused (then "done" is not logged: the steps since the newest checkpoint are not saved)."""
        from megadfm.training.checkpoint_verify import CheckpointSaveError

        try:
            return self._train()
        except CheckpointSaveError as e:
            logger.error("%s", e)
            return EXIT_SAVE_FAILED

    def _train(self) -> int:
        tcfg = self.cfg.training
        if self.step >= tcfg.train_steps:
            logger.info("nothing to do: step %d >= training.train_steps %d", self.step, tcfg.train_steps)
            return 0
        stop_at = min(tcfg.train_steps, tcfg.exit_after_steps or tcfg.train_steps)
        logger.info("training from step %d to %d%s", self.step, tcfg.train_steps,
                    f" (this invocation exits after step {stop_at}: training.exit_after_steps)" if stop_at < tcfg.train_steps else "")
        self.callbacks.call("on_train_start", self)
        try:
            while self.step < stop_at:
                self.train_step()
        except TrainingStopped as e:
            logger.error("%s", e)
            self.callbacks.call("on_train_end", self, "stopped")
            return EXIT_STOPPED
        if stop_at < tcfg.train_steps:
            self.callbacks.call("on_train_end", self, "paused")
            logger.info("exiting at step %d of %d (training.exit_after_steps); rerun the same command to resume", self.step, tcfg.train_steps)
            return 0
        self.callbacks.call("on_train_end", self, "done")
        logger.info("done: %d steps, %d samples", self.step, self.consumed_samples)
        return 0

    def close(self) -> None:
        self.callbacks.call("close", self)
