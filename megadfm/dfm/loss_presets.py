"""Loss presets: a ``dfm.loss_weighting`` value that names a weighting *and* a normaliser.

A preset reproduces another codebase's objective exactly, so it fixes both halves:

    coda  ->  weighting inverse_mask_ratio (1/sigma, sigma = the mask ratio)
              normaliser all_positions (B*L, padding included)

which is CoDA's ``sum(CE * masked / sigma) / (B * L)`` (with ``shift_logits`` on, the default).
Because the preset decides the normaliser, ``loss_normalizer`` must stay at its default
(``tokens``) or name the preset's own normaliser; anything else would be silently ignored, so
:class:`~megadfm.dfm.config.DFMConfig` rejects it.

Adding a preset is one ``LOSS_PRESETS.register(name)(LossPreset(weighting, normalizer))``.
Torch-free, like the registries it refers to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from megadfm.registry import Registry


@dataclass(frozen=True)
class LossPreset:
    weighting: str  # a LOSS_WEIGHTINGS key
    normalizer: str  # a LOSS_NORMALIZERS key


LOSS_PRESETS = Registry("dfm.loss_weighting (presets)")
LOSS_PRESETS.register("coda")(LossPreset(weighting="inverse_mask_ratio", normalizer="all_positions"))

PRESET_COMPATIBLE_NORMALIZER = "tokens"
"""The DFMConfig.loss_normalizer default: the value that means "not chosen" next to a preset."""


def resolve(loss_weighting: str, loss_normalizer: str) -> Tuple[str, str]:
    """(weighting key, normaliser key) that a DFMConfig's two fields select."""
    if loss_weighting in LOSS_PRESETS:
        preset = LOSS_PRESETS.get(loss_weighting)
        return preset.weighting, preset.normalizer
    return loss_weighting, loss_normalizer

