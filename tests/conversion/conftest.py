"""Fixtures of the conversion tests: the real stdlib corpus of the engine tests."""

from tests.training.conftest import stdlib_prefix  # noqa: F401  (re-exported fixture)
