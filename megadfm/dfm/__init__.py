"""The discrete flow-matching objective and sampler (see megadfm/dfm/README.md).

Entry points: :func:`megadfm.dfm.schedulers.make_scheduler`, :func:`megadfm.dfm.time_sampling.sample_times`,
:func:`megadfm.dfm.loss.dfm_loss`, :func:`megadfm.dfm.sampler.generate`. Nothing is imported here:
``megadfm.config`` imports ``megadfm.dfm.config`` and must not pull in the model or the sampler.
"""
