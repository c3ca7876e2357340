"""The registry of sampler methods (``SamplerConfig.method``) and the contract a method follows.

A method decodes the new positions of a batch in place, through one
:class:`~megadfm.dfm.sampling.context.SamplingContext`, and returns nothing::

    @SAMPLER_METHODS.register("name")
    def name(ctx) -> None

- ``ctx.x`` [B, L]: the current state (prompt, new positions, suffix, padding); write only where
  ``ctx.layout.generate`` is True and leave no ``ctx.mask_id`` there, except in rows retired by
  ``ctx.settle_rows()`` after an EOS (:func:`megadfm.dfm.sampler.generate` fills those with EOS).
- Run the model only through ``ctx.forward`` (``steps.predict_tokens`` or ``blocks.block_step``):
  it is the seam a KV cache plugs into and it counts the evaluations (``nfe_full``, ``nfe_block``,
  rows); count each step that evaluated the model in ``ctx.steps``; run only ``ctx.active`` rows.
- ``ctx.cfg``: the SamplerConfig; ``ctx.dfm``: the training run's DFMConfig (source, shift);
  ``ctx.scheduler``: its kappa(t); ``ctx.generator``: every random draw.
- A method that only makes sense for some configs raises ValueError at its start.

Kept apart from the methods so that they can import it without importing one another.
"""

from megadfm.registry import Registry

SAMPLER_METHODS = Registry("sampler.method")
