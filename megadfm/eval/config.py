"""Configuration of evaluation during training (the ``eval`` section of a run config); tools/evaluate.py
takes the same settings as flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from megadfm.config_base import doc, require

KNOWN_TASKS = ("humaneval", "infill", "likelihood", "instructions")


@dataclass
class EvalConfig:
    """A subset of the evaluation tasks, run every ``interval`` optimizer steps on the model being trained."""

    interval: int = doc(0, "Optimizer steps between evaluations during training (0: never). Every rank takes part: problems "
                           "are sharded across ranks (ZeRO-3 needs every rank in every forward) and the results gathered.")
    tasks: List[str] = doc(help="Tasks to run: humaneval, infill, likelihood, instructions (chat mode: held-out "
                                "instruction pairs, e.g. during SFT).", factory=lambda: ["likelihood", "infill"])
    sampler: str = doc("euler-16", "A pinned sampler preset of megadfm/eval/presets.py (the result records the full config).")
    humaneval_limit: Optional[int] = doc(16, "HumanEval problems per evaluation (null: all 164).")
    humaneval_max_new_tokens: int = doc(128, "Tokens generated per HumanEval completion (stop sequences cut it afterwards).")
    infill_limit: int = doc(64, "Infill problems per evaluation.")
    infill_tasks: Optional[str] = doc(None, "An infill task file (tools/evaluate.py --write-infill-tasks); null: built from the "
                                            "held-out split of the standard library at the first evaluation.")
    likelihood_documents: int = doc(16, "Held-out documents (validation split of the first data source) for the ELBO bound.")
    likelihood_points: int = doc(8, "Quadrature points over t for the ELBO bound.")
    instructions_file: Optional[str] = doc(None, "instructions task: a prompt/response JSONL; null: the held-out split of "
                                                 "the stdlib instruction set (megadfm/data/stdlib_instructions.py).")
    instructions_limit: int = doc(32, "instructions task: problems per evaluation.")
    instructions_max_new_tokens: int = doc(128, "instructions task: tokens generated per reply (stops at <|im_end|>).")
    batch_size: int = doc(8, "Sequences per sampler call.")
    timeout_s: float = doc(10.0, "Per-candidate execution timeout of HumanEval programs.")

    def __post_init__(self) -> None:
        require(self.interval >= 0, "interval", f"must be >= 0, got {self.interval}")
        unknown = [t for t in self.tasks if t not in KNOWN_TASKS]
        require(not unknown, "tasks", f"unknown task(s) {unknown}; known: {', '.join(KNOWN_TASKS)}")
        require(self.instructions_limit > 0 and self.instructions_max_new_tokens > 0, "instructions_limit",
                "instructions_limit and instructions_max_new_tokens must be positive")
        require(self.infill_limit > 0 and self.likelihood_documents > 0 and self.likelihood_points > 0 and self.batch_size > 0,
                "infill_limit", "infill_limit, likelihood_documents, likelihood_points and batch_size must be positive")
        require(self.humaneval_limit is None or self.humaneval_limit > 0, "humaneval_limit", "must be positive or null")
