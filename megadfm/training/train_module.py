"""The module DeepSpeed wraps: model + training objective (``dfm.objective``: DFM or AR) in one forward.

Running the whole objective inside one ``forward`` matters under ZeRO-3: parameters are gathered by
module hooks, and the LM-head weight (tied to the embedding) is used by the loss outside the
embedding's own forward. Registering it as an external parameter of this wrapper keeps it gathered
for the wrapper's whole forward and backward.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from torch import nn

from megadfm.dfm.config import DFMConfig
from megadfm.dfm.objectives import OBJECTIVES
from megadfm.dfm.schedulers import Scheduler


class DFMTrainingModule(nn.Module):
    """``forward(batch, t, generator) -> DFMLossOutput`` around a Qwen3DFM."""

    def __init__(self, model: nn.Module, dfm_cfg: DFMConfig, scheduler: Scheduler, pad_token_id: int):
        super().__init__()
        self.model = model
        self.dfm_cfg = dfm_cfg
        self.scheduler = scheduler
        self.pad_token_id = pad_token_id
        self.objective = OBJECTIVES.get(dfm_cfg.objective)  # dfm_loss, or ar_loss (megadfm/dfm/objectives.py)

    def register_zero3_external_parameters(self) -> None:
        import deepspeed

        deepspeed.zero.register_external_parameter(self, self.model.output_weight)

    def forward(self, batch: Dict[str, torch.Tensor], t: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """A plain dict of tensors (not the dataclass): DeepSpeed attaches its ZeRO-3 backward hooks
        only to tensors inside tuples, lists and dicts, and the hook is what re-gathers the tied head
        weight for the loss's backward. :meth:`Trainer.forward` turns it back into a DFMLossOutput."""
        out = self.objective(self.model, batch, t, self.dfm_cfg, self.scheduler, generator, pad_token_id=self.pad_token_id)
        return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}

    def parameter_group(self, name: str) -> str:
        """Group of a wrapper parameter name ('model.layers.0...' -> the model's grouping)."""
        return self.model.parameter_group(name[len("model."):] if name.startswith("model.") else name)

