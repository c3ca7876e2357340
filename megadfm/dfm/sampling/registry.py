"""The registry of sampler methods (``SamplerConfig.method``) and the contract a method follows.

A method decodes the new positions of a batch in place and returns how many model evaluations
it made::

    @SAMPLER_METHODS.register("name")
    def name(model, x, layout, cfg, dfm, scheduler, mask_id, generator) -> int

- ``x`` [B, L]: the current state (prompt, new positions, suffix, padding); write only where
  ``layout.generate`` is True and leave no ``mask_id`` there (except after an EOS stop:
  :func:`megadfm.dfm.sampler.generate` fills those with EOS).
- ``cfg``: the SamplerConfig; ``dfm``: the training run's DFMConfig (source, shift); ``scheduler``:
  its kappa(t); ``generator``: every random draw.
- A method that only makes sense for some configs raises ValueError at its start.

Kept apart from the methods so that they can import it without importing one another.
"""

from megadfm.registry import Registry

SAMPLER_METHODS = Registry("sampler.method")
