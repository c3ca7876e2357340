"""Evaluation during training: every ``eval.interval`` steps, the configured tasks (e.g. infill exact
match on 64 problems, the ELBO bound, HumanEval on a few problems) run on the model being trained,
with a pinned sampler. Scores go to the telemetry sinks as one ``kind: eval`` record (metrics.jsonl,
W&B; the dashboard's evaluation panel) and the full results to RUN_DIR/eval/step_XXXXXXXX/training/<task>.json.

Rank 0 evaluates a plain copy of the current weights (gathered from every rank under ZeRO-3, where
the weights are partitioned and a module's weights are released again after its forward), so the
sampler never meets DeepSpeed's hooks and the other ranks only wait at a barrier.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Dict

import torch.distributed as dist

from megadfm.checkpoints.layout import tag_for_step
from megadfm.training.callbacks.base import Callback, StepState

if TYPE_CHECKING:
    from megadfm.training.trainer import Trainer

logger = logging.getLogger("megadfm")

EVAL_DIR = "eval"


def flat_scores(task: str, result: Dict[str, Any], generation: Dict[str, Any]) -> Dict[str, Any]:
    """``eval/<task>/<score>`` (and ``_stderr``), likelihood numbers, NFE and tokens/s, for the sinks."""
    out: Dict[str, Any] = {}
    for name, score in (result.get("scores") or {}).items():
        out[f"eval/{task}/{name}"] = score.get("mean")
        out[f"eval/{task}/{name}_stderr"] = score.get("stderr")
    for key in ("nelbo_per_token", "ppl_upper_bound", "nll_per_token", "ppl"):
        if result.get(key) is not None:
            out[f"eval/{task}/{key}"] = result[key]
    out[f"eval/{task}/nfe"] = generation.get("nfe")
    out[f"eval/{task}/nfe_block"] = generation.get("nfe_block")
    out[f"eval/{task}/tokens_per_s"] = generation.get("tokens_per_s")
    return out


class EvaluationCallback(Callback):
    def __init__(self, trainer: "Trainer"):
        self.cfg = trainer.cfg.eval
        self._model = None

    def _copy_weights(self, trainer: "Trainer") -> None:
        """The training weights into rank 0's evaluation copy (a collective under ZeRO-3)."""
        import deepspeed
        import torch

        params = list(trainer.module.model.named_parameters())
        with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=trainer.cfg.training.zero_stage == 3):
            if trainer.rank == 0:
                own = dict(self._eval_model(trainer).model.named_parameters())
                with torch.no_grad():
                    for name, p in params:
                        own[name].copy_(p.detach().to(own[name].dtype))

    def _eval_model(self, trainer: "Trainer"):
        if self._model is None:
            from megadfm.data.tokenizer import load_tokenizer
            from megadfm.eval.models import DFMEvalModel
            from megadfm.eval.presets import sampler_from_preset
            from megadfm.model.qwen3_dfm import Qwen3DFM

            cfg = trainer.cfg
            self._model = DFMEvalModel(
                kind="dfm", label="training", tokenizer=load_tokenizer(cfg.data.tokenizer, cfg.model.mask_token_id),
                identity={"path": os.path.abspath(trainer.out_dir), "kind": "training", "step": None,
                          "tokenizer": os.path.abspath(cfg.data.tokenizer)},  # its chat template (instructions task)
                sampler=sampler_from_preset(self.cfg.sampler), batch_size=self.cfg.batch_size, device=trainer.device,
                model=Qwen3DFM(cfg.model).to(trainer.device).eval(), dfm=cfg.dfm, pad_token_id=cfg.data.pad_token_id)
        return self._model

    def _settings(self, trainer: "Trainer"):
        from megadfm.eval.tasks import TaskSettings

        data = trainer.cfg.data
        return TaskSettings(humaneval_max_new_tokens=self.cfg.humaneval_max_new_tokens, timeout_s=self.cfg.timeout_s,
                            infill_tasks=self.cfg.infill_tasks, infill_count=self.cfg.infill_limit,
                            data_prefix=data.blend[0].prefix if data.blend else None, data_split=tuple(data.split),
                            likelihood_documents=self.cfg.likelihood_documents, likelihood_seq_len=data.seq_len,
                            likelihood_points=self.cfg.likelihood_points,
                            instructions_file=self.cfg.instructions_file,
                            instructions_max_new_tokens=self.cfg.instructions_max_new_tokens, progress=False)

    def post_step(self, trainer: "Trainer", state: StepState) -> None:
        if self.cfg.interval and state.step % self.cfg.interval == 0:
            self.evaluate(trainer)

    def evaluate(self, trainer: "Trainer") -> Dict[str, Any]:
        record: Dict[str, Any] = {"kind": "eval", "step": trainer.step, "time": time.time()}
        self._copy_weights(trainer)
        if trainer.rank == 0:
            self._run_tasks(trainer, record)
        if dist.is_initialized() and trainer.world_size > 1:
            dist.barrier()
        trainer.callbacks.call("on_validation", trainer, trainer.step, record)
        logger.info("evaluation at step %d: %s", trainer.step,
                    ", ".join(f"{k[5:]}={v:.4g}" for k, v in record.items()
                              if k.startswith("eval/") and isinstance(v, float) and not k.endswith(("_stderr", "/nfe", "/nfe_block"))))
        return record

    def _run_tasks(self, trainer: "Trainer", record: Dict[str, Any]) -> None:
        from megadfm.eval.results import write_result
        from megadfm.eval.tasks import run_task

        model = self._eval_model(trainer)
        model.identity["step"] = trainer.step
        settings = self._settings(trainer)
        for task in self.cfg.tasks:
            limit = {"humaneval": self.cfg.humaneval_limit, "infill": self.cfg.infill_limit,
                     "instructions": self.cfg.instructions_limit}.get(task)
            settings.limit = limit
            result, generation, wall = run_task(model, task, settings)
            record.update(flat_scores(task, result, generation))
            if trainer.rank == 0:
                out = os.path.join(trainer.out_dir, EVAL_DIR, tag_for_step(trainer.step))
                write_result(out, model.describe(), task, result, generation, wall,
                             {"limit": limit, "sampler_preset": self.cfg.sampler})
