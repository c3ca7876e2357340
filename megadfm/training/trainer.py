"""The DeepSpeed trainer: builds model, optimizer and engine; runs steps; saves and resumes.

Noise is keyed, not stateful: the t of every sequence and its corruption mask are drawn from seeds
derived from (training.seed, optimizer step, the sequence's position in the global batch). A run
resumed at step k therefore sees exactly the t and masks an uninterrupted run would, and a run on
another data-parallel world size (same global batch) sees the same ones too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from megadfm.config import MegaDFMConfig, config_to_yaml, dump_config
from megadfm.config_base import to_dict
from megadfm.dfm.schedulers import make_scheduler
from megadfm.dfm.time_sampling import sample_times, step_seed
from megadfm.model.qwen3_dfm import Qwen3DFM
from megadfm.training.checkpoint import CheckpointManager
from megadfm.training.ds_config import build_ds_config
from megadfm.training.init_weights import check_architecture, fingerprint, load_into_model
from megadfm.training.lr_schedule import lr_multiplier
from megadfm.training.mfu import device_peak_flops, flops_per_token, mfu
from megadfm.training.optim import build_optimizer
from megadfm.training.grad_norms import compute_grad_norms
from megadfm.training.telemetry.legacy import Telemetry
from megadfm.training.train_module import DFMTrainingModule, as_loss_output
from megadfm.training.training_data import TrainingData

logger = logging.getLogger("megadfm")


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/Inf and training.nonfinite_policy is 'stop'."""


def _sha256(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    from megadfm.data.qwen_tokenizer_build import sha256_file

    return sha256_file(path)


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
    def __init__(self, cfg: MegaDFMConfig, rank: int, world_size: int):
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
            dump_config(cfg, os.path.join(self.out_dir, "config.yaml"))
        logger.info("megadfm run %s: world size %d (%s, backend %s), ZeRO stage %d, precision %s, "
                    "global batch %d = micro %d x accumulation %d x data-parallel %d, seq_len %d",
                    self.out_dir, world_size, self.device.type, dist.get_backend(), tcfg.zero_stage, tcfg.precision,
                    self.global_batch, tcfg.micro_batch_size, tcfg.grad_accum_steps, world_size, cfg.data.seq_len)

        self.scheduler = make_scheduler(cfg.dfm)
        model = self._build_model(deepspeed)
        self.module = DFMTrainingModule(model, cfg.dfm, self.scheduler, cfg.data.pad_token_id)
        if tcfg.zero_stage == 3:
            self.module.register_zero3_external_parameters()
        self.ckpt = CheckpointManager(os.path.join(self.out_dir, "checkpoints"), cfg.checkpoint, rank, world_size)
        self.resume_from = self.ckpt.latest_step() if cfg.checkpoint.resume else None
        if self.resume_from is not None and self.ckpt.needs_universal(self.resume_from):
            self.ckpt.prepare_universal(self.resume_from)
            self.ds_config["checkpoint"] = {"load_universal": True}
        optimizer = build_optimizer(self.module, tcfg, self.module.parameter_group)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, tcfg))
        self.engine, self.optimizer, _, self.lr_scheduler = deepspeed.initialize(
            model=self.module, optimizer=optimizer, lr_scheduler=lr_sched, config=self.ds_config)

        self.step = 0
        self.consumed_samples = 0
        self._telemetry_state = None
        self._test_nan_step = int(os.environ.get("MEGADFM_TEST_NAN_AT_STEP", "0"))
        self._resume_if_possible()
        self.data = TrainingData(cfg, rank, world_size, self.consumed_samples)
        self.flops_per_token = flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak_flops = device_peak_flops()
        self.telemetry = Telemetry(cfg.telemetry, self.out_dir, log_interval=tcfg.log_interval, grad_clip=tcfg.grad_clip,
                                   scheduler=self.scheduler, run_config=to_dict(cfg))
        if self._telemetry_state is not None:
            self.telemetry.load_state_dict(self._telemetry_state)
        self._steps_log = None
        if rank == 0:
            # one line per optimizer step with the exact loss and the batch identity (resume checks, replays);
            # telemetry/metrics.jsonl holds the per-bucket view per logging step
            self._steps_log = open(os.path.join(self.out_dir, "telemetry", "train_steps.jsonl"), "a")

    # ---- set-up --------------------------------------------------------------------------------
    def _build_model(self, deepspeed) -> Qwen3DFM:
        cfg, tcfg = self.cfg, self.cfg.training
        mcfg = cfg.model
        if tcfg.precision == "bf16" and mcfg.dtype != "bfloat16":
            logger.info("model.dtype float32 kept for master weights; DeepSpeed bf16 casts the module")
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, enabled=tcfg.zero_stage == 3 and tcfg.zero_init):
            model = Qwen3DFM(mcfg, seed=tcfg.seed)
        if mcfg.activation_checkpointing:
            logger.info("activation checkpointing: on (every block recomputed in backward)")
        src = tcfg.init_from
        if src is None:
            logger.info("initialisation: from scratch (seed %d)", tcfg.seed)
        else:
            from megadfm.conversion.checkpoint_source import open_source

            source = open_source(src)  # an init folder, a run dir, its checkpoints/ or one step_XXXXXXXX/
            what = "megadfm init folder" if source.kind == "init_folder" else f"megadfm checkpoint (step {source.step})"
            logger.info("initialisation: %s %s", what, source.path)
            check_architecture(source.model_config, mcfg, source.path)
            load_into_model(model, source.iter_tensors(), source.path, {n: tuple(sp.shape) for n, sp in source.specs.items()})
        fp = fingerprint(model)
        logger.info("weights fingerprint: %s", ", ".join(f"{k}={v:.6g}" for k, v in fp.items()))
        self.weights_fingerprint = fp
        return model

    def _resume_if_possible(self) -> None:
        if self.resume_from is None:
            return
        loaded = self.ckpt.load(self.engine, self.resume_from)
        state = loaded.client_state
        self.step = int(state["step"])
        self.consumed_samples = int(state["consumed_samples"])
        self._telemetry_state = state.get("telemetry")
        logger.info("resumed from %s: step %d, %d samples consumed", loaded.path, self.step, self.consumed_samples)

    # ---- one optimizer step --------------------------------------------------------------------
    def _micro_offsets(self, micro: int) -> int:
        """Position of this rank's micro-batch in the global batch (data is laid out the same way)."""
        mbs = self.cfg.training.micro_batch_size
        return micro * mbs * self.world_size + self.rank * mbs

    def _noise(self, step: int, micro: int, n: int):
        return training_noise(self.cfg, self.scheduler, step, self._micro_offsets(micro), n, self.global_batch, self.device)

    def train_step(self) -> Dict[str, Any]:
        tcfg = self.cfg.training
        step = self.step + 1  # the step being completed, counting from 1 (telemetry and logs use this number)
        start = time.time()
        self.engine.train()
        losses, sample_ids, tokens = [], [], 0
        for micro in range(tcfg.grad_accum_steps):
            batch = self.data.next_train_batch(self.device)
            t, gen = self._noise(self.step, micro, batch["input_ids"].shape[0])
            out = as_loss_output(self.engine(batch, t, gen))
            if self._test_nan_step == step:  # test hook: a non-finite loss on demand (cannot be provoked reliably)
                out.loss = out.loss * float("nan")
            self.engine.backward(out.loss)
            self.telemetry.record_loss_output(out, batch, replay={"step": step, "micro": micro,
                                                                   "global_offset": self._micro_offsets(micro)})
            losses.append(out.loss.detach())
            sample_ids.append(batch["sample_index"].cpu())
            tokens += int(batch["loss_mask"].sum())
            if micro < tcfg.grad_accum_steps - 1:
                self.engine.step()  # DeepSpeed only counts the micro-step before the boundary
        loss = torch.stack(losses).mean().double().cpu()
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world_size
        norms = compute_grad_norms(self.engine, self.module.parameter_group, clip=tcfg.grad_clip)
        self.telemetry.record_grad_norms(norms)
        lr = self.lr_scheduler.get_last_lr()[0]
        finite = math.isfinite(float(loss)) and math.isfinite(norms.total)
        if not finite and tcfg.nonfinite_policy == "stop":
            raise NonFiniteError(f"step {step}: loss {float(loss)} / grad norm {norms.total} is not finite; saving the "
                                 "last good state and stopping (lower training.lr, inspect telemetry/spikes.jsonl, or set "
                                 "training.nonfinite_policy: skip)")
        decision = self.telemetry.check_spike(step)
        skip = (not finite) or decision.skip
        if skip:
            logger.warning("step %d: update skipped (%s)", step, "non-finite loss/grad" if not finite else "loss spike")
            self._skip_update()
        self.engine.step()
        self.step = step
        self.consumed_samples += self.global_batch
        tokens_all = torch.tensor([tokens], dtype=torch.float64)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(tokens_all)
        elapsed = time.time() - start
        tps = float(tokens_all) / elapsed
        m = mfu(self.cfg.model, self.cfg.data.seq_len, tps / self.world_size, self.peak_flops)
        if torch.cuda.is_available():
            mem = torch.cuda.max_memory_allocated() / 2**30
        else:
            import resource

            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
        self.telemetry.record_scalars(lr=lr, tokens_per_s=tps, mfu=m, mem_max_gb=mem, step_time_s=elapsed,
                                      grad_accum_steps=tcfg.grad_accum_steps)
        record = {"step": step, "loss": float(loss), "lr": lr, "grad_norm": norms.total, "skipped": bool(skip),
                  "consumed_samples": self.consumed_samples, "tokens_per_s": tps, "mfu": m,
                  "batch_hash": self._batch_hash(torch.cat(sample_ids))}
        if self.rank == 0:
            self._steps_log.write(json.dumps(record) + "\n")
            self._steps_log.flush()
        log_record = self.telemetry.end_step(step, skipped=skip, force_log=step == tcfg.train_steps)
        if log_record is not None:
            logger.info("%s", self.telemetry.format_line(log_record))
        if decision.stop:
            raise NonFiniteError(f"step {step}: loss spike and telemetry.spike_action=stop (see telemetry/spikes.jsonl)")
        return record

    def _batch_hash(self, local_ids: torch.Tensor) -> str:
        """Identity of the global batch (sorted sample indices of all ranks): equal across world sizes
        exactly when the data order is."""
        import hashlib

        if dist.is_initialized() and self.world_size > 1:
            parts = [torch.zeros_like(local_ids) for _ in range(self.world_size)]
            dist.all_gather(parts, local_ids)
            local_ids = torch.cat(parts)
        return hashlib.sha1(",".join(map(str, sorted(local_ids.tolist()))).encode()).hexdigest()[:16]

    def _skip_update(self) -> None:
        """Skip the update: zero the gradients and the LR for this step (AdamW then leaves the weights
        unchanged; its moments decay by one step as if the gradient had been zero)."""
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
    def save(self) -> Optional[str]:
        cfg = self.cfg
        client_state = {"step": self.step, "consumed_samples": self.consumed_samples, "optimizer_steps": self.step,
                        "telemetry": self.telemetry.state_dict()}
        meta = {"consumed_samples": self.consumed_samples, "tokenizer_json_sha256":
                _sha256(os.path.join(cfg.data.tokenizer, "tokenizer.json")), "data_manifest": self.data.manifest(),
                "weights_fingerprint_at_init": self.weights_fingerprint}
        return self.ckpt.save(self.engine, self.step, client_state, meta, {"config.yaml": config_to_yaml(cfg)})

    def train(self) -> int:
        tcfg, ccfg = self.cfg.training, self.cfg.checkpoint
        if self.step >= tcfg.train_steps:
            logger.info("nothing to do: step %d >= training.train_steps %d", self.step, tcfg.train_steps)
            return 0
        stop_at = min(tcfg.train_steps, tcfg.exit_after_steps or tcfg.train_steps)
        logger.info("training from step %d to %d%s", self.step, tcfg.train_steps,
                    f" (this invocation exits after step {stop_at}: training.exit_after_steps)" if stop_at < tcfg.train_steps else "")
        while self.step < stop_at:
            try:
                self.train_step()
            except NonFiniteError as e:
                logger.error("%s", e)
                self.save()
                return 3
            if tcfg.eval_interval and self.step % tcfg.eval_interval == 0:
                self.validate()
            if ccfg.save_interval and self.step % ccfg.save_interval == 0:
                self.save()
        if not ccfg.save_interval or self.step % ccfg.save_interval != 0:
            self.save()
        if stop_at < tcfg.train_steps:
            logger.info("exiting at step %d of %d (training.exit_after_steps); rerun the same command to resume", self.step, tcfg.train_steps)
            return 0
        logger.info("done: %d steps, %d samples", self.step, self.consumed_samples)
        return 0

    def validate(self) -> Dict[str, Any]:
        """Validation loss per mask-ratio bucket at each bucket's fixed mid ratio, on the same held-out
        batches with the same masks every time (seeded by batch index), so curves are comparable."""
        tcfg = self.cfg.training
        batches = list(self.data.valid_batches(self.device, tcfg.eval_batches))
        self.engine.eval()

        def loss_at_t(t_value: float):
            outs = []
            with torch.no_grad():
                for i, batch in enumerate(batches):
                    n = batch["input_ids"].shape[0]
                    t = torch.full((n,), float(t_value), device=self.device)
                    gen = torch.Generator(device=self.device).manual_seed(step_seed(tcfg.seed + 7919, i, self.rank))
                    outs.append(as_loss_output(self.engine(batch, t, gen)))
            return outs

        record = self.telemetry.log_validation(self.step, loss_at_t)
        self.engine.train()
        buckets = " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in record.items()
                           if k.startswith("val/bucket_") and k.endswith("/ce") and v is not None)
        logger.info("validation at step %d: loss %.4f, ce %.4f; ce per mask-ratio bucket: %s", self.step,
                    record.get("val/loss") or float("nan"), record.get("val/ce") or float("nan"), buckets)
        return record

    def close(self) -> None:
        self.telemetry.close()
        if self._steps_log is not None:
            self._steps_log.close()
