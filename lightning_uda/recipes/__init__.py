"""Recipes shipped inside the package, in LightningCLI's config layout (``class_path`` /
``init_args``): :mod:`lightning_uda.recipes.demo`. The papers' recipes for real data are YAML
layers in the repository's ``examples/recipes/`` (see ``docs/recipes.md``)."""
