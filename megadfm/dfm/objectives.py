"""Training objectives by name (``dfm.objective``): ``objective(model, batch, t, cfg, scheduler, generator,
pad_token_id=...) -> DFMLossOutput``. dfm: the discrete flow-matching loss (loss.py); ar: next-token
CE of a causal model (ar_loss.py). A new objective is one function registered here."""

from __future__ import annotations

from megadfm.dfm.ar_loss import ar_loss
from megadfm.dfm.loss import dfm_loss
from megadfm.registry import Registry

OBJECTIVES = Registry("dfm.objective")
OBJECTIVES.register("dfm")(dfm_loss)
OBJECTIVES.register("ar")(ar_loss)
