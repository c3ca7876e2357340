"""Training objectives by name (``dfm.objective``): ``objective(model, batch, t, cfg, scheduler, generator,
pad_token_id=...) -> DFMLossOutput``. dfm: the discrete flow-matching loss, in the attention mode
``dfm.mode`` names (``DFM_MODES``: full, loss.py; block, block_diffusion.py); ar: next-token CE of a causal
model (ar_loss.py). A new objective or mode is one function registered here."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from megadfm.dfm.ar_loss import ar_loss
from megadfm.dfm.block_diffusion import block_dfm_loss
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss import DFMLossOutput, dfm_loss
from megadfm.dfm.schedulers import Scheduler
from megadfm.registry import Registry
from megadfm.tokens import PAD_TOKEN_ID

DFM_MODES = Registry("dfm.mode")
DFM_MODES.register("full")(dfm_loss)
DFM_MODES.register("block")(block_dfm_loss)

OBJECTIVES = Registry("dfm.objective")


@OBJECTIVES.register("dfm")
def dfm_objective(model: torch.nn.Module, batch: Dict[str, torch.Tensor], t: torch.Tensor, cfg: DFMConfig,
                  scheduler: Scheduler, generator: torch.Generator, *, mask_token_id: Optional[int] = None,
                  pad_token_id: int = PAD_TOKEN_ID) -> DFMLossOutput:
    """The DFM loss of ``cfg.mode``."""
    return DFM_MODES.get(cfg.mode)(model, batch, t, cfg, scheduler, generator, mask_token_id=mask_token_id,
                                   pad_token_id=pad_token_id)


OBJECTIVES.register("ar")(ar_loss)
