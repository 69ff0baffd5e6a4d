"""The pool's policy; it lives in :mod:`katapool.config.policy` (the pool file reads it, and
config never imports the pool). Re-exported here for code that imports it from the pool."""

from katapool.config.policy import PoolPolicy

__all__ = ["PoolPolicy"]
