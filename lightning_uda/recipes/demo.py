"""The demo's recipe: a base layer and one method layer per row, in LightningCLI's layout.

The same structure as the papers' recipes in ``examples/recipes/`` (``model`` / ``data`` /
``trainer`` with ``class_path`` and ``init_args``), kept as Python mappings so that the package
ships it without data files. :func:`demo_config` merges the base with a row's layer into one
config that ``lightning-uda fit --config`` runs (``lightning-uda demo --print-recipe`` prints it);
:func:`lightning_uda.demo.run_method` trains each row from the same merged values.
"""

from __future__ import annotations

from typing import Any

from lightning_uda.recipes import merge

DEMO_STEPS = 1000
DEMO_BATCH_SIZE = 16


def _digits(domain: str, split: str, num_images: int) -> dict[str, Any]:
    return {
        "class_path": "lightning_uda.data.demo.DigitScenes",
        "init_args": {"domain": domain, "split": split, "num_images": num_images, "seed": 0},
    }


#: The base layer: what every row shares. Optimiser and model calibrated in
#: lightning_uda/data/demo.py; the data are :func:`lightning_uda.data.demo.demo_datamodule`'s.
DEMO_RECIPE: dict[str, Any] = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": DEMO_STEPS,
        "max_epochs": -1,
        "val_check_interval": DEMO_STEPS,
        "check_val_every_n_epoch": None,
        "num_sanity_val_steps": 0,
    },
    "model": {
        "init_args": {
            "num_classes": 11,  # the demo's classes (lightning_uda.data.demo.DEMO_CLASSES)
            "arch": "tiny_unet",
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 1e-4,
            "head_lr_mult": 1.0,  # TinyUNet's "head" is a 1×1 conv; no 10× as for DeepLabV2
            "poly_power": 0.9,
        }
    },
    "data": {
        "class_path": "lightning_uda.data.UDADataModule",
        "init_args": {
            "source": _digits("source", "train", 2000),
            # target labels reach the method only as monitoring labels (pseudo-label accuracy)
            "target": _digits("target", "train", 2000),
            "val": _digits("target", "val", 400),
            "batch_size": DEMO_BATCH_SIZE,
            "val_batch_size": 200,
            "num_workers": 0,
            "target_monitor_labels": True,
            "seed": 0,
        },
    },
}


def _method(name: str, **init_args: Any) -> dict[str, Any]:
    return {"model": {"class_path": f"lightning_uda.methods.{name}", "init_args": init_args}}


#: DAFormer's strategies that apply to the demo: rare-class sampling (its 3,000 pixels of a
#: 512×512 crop scaled to the 32×32 scenes: 12; the scenes are not cropped, so no crop to
#: re-draw), the warm-up (1,500 of 40k steps → 38 of 1,000, from 1e-6×) and poly 1.0, α 0.999,
#: the batch-union class choice and its jitter. Not the MiT network, AdamW 6e-5 nor the weight
#: decay (the demo's TinyUNet recipe is shared by every row), not the ImageNet feature distance
#: (the demo model has no ImageNet weights to stay near), not the pseudo-label crop (the demo
#: scenes have no ego-car or rectification border), and the source CE over valid pixels (the
#: demo's rows all average it so; DAFormer's recipe averages over all pixels as mmseg).
#: mix_warmup_steps as DACS' row.
_DAFORMER_ON_DEMO: dict[str, Any] = {
    "mix_warmup_steps": 300,
    "warmup_steps": round(1500 / 40_000 * DEMO_STEPS),
    "warmup_ratio": 1e-6,
    "poly_power": 1.0,
    "feature_distance_weight": 0.0,
    "pseudo_label_crop": (0, 0),
    "source_ce_mean_over": "valid",
}
_RARE_CLASS_SAMPLING = {
    "data": {
        "init_args": {
            "rare_class_sampling": {
                "temperature": 0.01,
                "min_pixels": round(3000 / 512**2 * 32**2),
                "min_crop_ratio": 0.0,
            }
        }
    }
}

#: One method layer per demo row (the row name → its layer over :data:`DEMO_RECIPE`).
DEMO_METHODS: dict[str, dict[str, Any]] = {
    "source_only": _method("SourceOnlyModule"),
    # Self-training starts after 300 source-only steps: with pseudo-labels from step 0 the
    # teacher labels photo texture as ink and DACS diverged on 1 of 3 seeds (measured; see
    # lightning_uda/data/demo.py). α, τ and the augmentation are DACS' own.
    "classmix": _method("ClassMixModule", mix_warmup_steps=300),
    "dacs": _method("DACSModule", mix_warmup_steps=300),
    "daformer": {**_method("DAFormerModule", **_DAFORMER_ON_DEMO), **_RARE_CLASS_SAMPLING},
    # MIC on the daformer row; MIC's 32-pixel blocks on DAFormer's 512×512 crops of half-resolution
    # frames would be 2 pixels on the 32×32 scenes; the row keeps 4 (8×8 blocks per scene, 70%
    # masked), as measured in the demo table. λ and the ratio are MIC's own.
    "mic": {
        **_method("MICModule", **_DAFORMER_ON_DEMO, mask_block_size=4),
        **_RARE_CLASS_SAMPLING,
    },
    "minent": _method("MinEntModule"),
    # A 16-wide discriminator (paper: 64) adapts as well on the 32×32 demo at about a quarter of
    # the step time: on CPU the 64-wide D costs more than TinyUNet itself (figures in the
    # README). The class default stays 64.
    "advent": _method("AdvEntModule", discriminator_width=16),
    # AdaptSegNet: AdvEnt's row with the softmax instead of the entropy as D's input.
    "adaptseg": _method("AdaptSegNetModule", discriminator_width=16),
    # DANN: the paper's λ_p schedule (γ 10) and λ 1, a 256-wide per-pixel domain classifier on
    # the deepest TinyUNet features.
    "dann": _method("DANNModule"),
    # FDA: β is a fraction of the side; the paper's 0.01 gives a 0-pixel window on 32×32 scenes
    # (the identity), so the demo uses 0.05 (a 1-pixel window, the smallest that translates;
    # the paper's 0.05 on 1024×512 is 25 pixels). Entropy from the start, as the FDA README runs.
    "fda": _method("FDAModule", fda_beta=0.05),
    # LSD-seg: the reference's loss weights and G/D optimisers; G and D narrowed for the CPU
    # (16 and 32 channels instead of 64 and 128; at the reference widths D alone costs more than
    # the TinyUNet) on the demo's own segmentor recipe.
    "lsd_seg": _method("LSDSegModule", generator_width=16, discriminator_width=32),
    # MCC pushes predictions towards balanced classes; with 11 classes of which background is
    # ~80% of the pixels, the paper's λ=1 collapsed the demo model and 0.1 lost a point, so the
    # demo uses 0.02 (measured on seed 0; the class default stays 1).
    "mcc": _method("MCCModule", mcc_weight=0.02),
    # The upper bound: SourceOnly trained on the labelled target train split.
    "oracle": {
        **_method("SourceOnlyModule"),
        "data": {"init_args": {"source": _digits("target", "train", 2000)}},
    },
}


#: The rows ``lightning-uda demo`` runs without ``--methods``: one per family of the table, the
#: family's strongest and quickest row, and the two bounds. SourceOnly (the lower bound) is first,
#: so a first result is printed within a minute; DACS (self-training with cross-domain mixing),
#: AdvEnt (output-space adversarial alignment), FDA (input-space translation) and the oracle
#: (SourceOnly on labelled target data: the upper bound) follow, about 7 minutes in all on two
#: CPU cores. ``--methods all`` runs every row of :data:`DEMO_METHODS` (20–30 minutes; LSD-seg
#: alone takes about 8).
DEFAULT_METHODS: tuple[str, ...] = ("source_only", "dacs", "advent", "fda", "oracle")


def demo_config(name: str, steps: int = DEMO_STEPS, seed: int = 0) -> dict[str, Any]:
    """Row ``name``'s whole config: :data:`DEMO_RECIPE` merged with its method layer, for
    ``steps`` steps and seed ``seed`` (model, data and sampling)."""
    if name not in DEMO_METHODS:
        raise ValueError(f"unknown demo method {name!r}; choose from {sorted(DEMO_METHODS)}")
    run = {
        "seed_everything": seed,
        "trainer": {"max_steps": steps, "val_check_interval": steps},
        "model": {"init_args": {"seed": seed}},
        "data": {"init_args": {"seed": seed}},
    }
    config = merge(merge(DEMO_RECIPE, DEMO_METHODS[name]), run)
    for split in ("source", "target", "val"):
        config["data"]["init_args"][split]["init_args"]["seed"] = seed
    return config
