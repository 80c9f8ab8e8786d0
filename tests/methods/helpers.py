"""Moved to ``tests/helpers/methods.py``; this re-export keeps the old import path working for
modules not yet switched (tests/test_examples.py, tests/test_docs.py). Import from
``tests.helpers.methods`` instead; remove this file once nothing imports it."""

from tests.helpers.methods import (  # noqa: F401
    CLASSES,
    NUM_CLASSES,
    ToyScenes,
    cpu_trainer,
    tiny_module_kwargs,
    toy_datamodule,
)
