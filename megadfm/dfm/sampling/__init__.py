"""Sampler methods, one file each, registered in :data:`SAMPLER_METHODS` (``SamplerConfig.method``).

Importing this package registers every method: ``sampler_config`` imports it to learn the
allowed values. A new method is a new file here with one ``@SAMPLER_METHODS.register("name")``
function (contract: :mod:`megadfm.dfm.sampling.registry`) plus its import line below.
"""

# Imported for their registration; the order is the order --help and errors list them in.
from megadfm.dfm.sampling import euler  # noqa: F401  isort: skip
from megadfm.dfm.sampling import confidence  # noqa: F401  isort: skip
from megadfm.dfm.sampling import threshold  # noqa: F401  isort: skip
from megadfm.dfm.sampling.registry import SAMPLER_METHODS

__all__ = ["SAMPLER_METHODS"]
