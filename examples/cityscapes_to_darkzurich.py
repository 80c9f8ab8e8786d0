"""Cityscapes → Dark Zurich (night) with DAFormer, HRDA and MIC, as MIC's settings.

    python examples/cityscapes_to_darkzurich.py --method mic_hrda --print-recipe
    python examples/cityscapes_to_darkzurich.py --data-root /data --method mic_hrda

A front over the recipe layers in ``examples/recipes/`` (``base.yaml``,
``data/cityscapes_darkzurich.yaml``, ``methods/<method>.yaml`` and the adjustments
``data/cityscapes_darkzurich.<method>.yaml``); ``--print-recipe`` prints the resolved config,
the equivalent ``lightning-uda fit`` command and the published figures. Expects
``/data/cityscapes/{leftImg8bit,gtFine}`` and ``/data/dark_zurich/{rgb_anon,gt}``.

Published Cityscapes → Dark Zurich test mIoU (19 classes, from the benchmark server): MIC (HRDA)
60.2, HRDA 55.9, DAFormer 53.8 (MIC paper, Table 2), VFM-UDA++ 68.7. The run validates on the 50
labelled val frames; the test score comes from submitting the test predictions (train-id PNGs,
``BenchmarkPredictionWriter(benchmark="darkzurich")``).
"""

from __future__ import annotations

from _common import parse_args, run

METHODS = ("daformer", "mic", "hrda", "mic_hrda")
PUBLISHED = (
    "# published Cityscapes → Dark Zurich (test): MIC (HRDA) 60.2, HRDA 55.9, DAFormer 53.8; "
    "VFM-UDA++ 68.7"
)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, print the published figures with ``--print-recipe``, run the recipe."""
    args = parse_args(__doc__.splitlines()[0], argv, methods=METHODS)
    if args.print_recipe:
        print(PUBLISHED, flush=True)
    run(args, source="cityscapes", target="darkzurich")


if __name__ == "__main__":
    main()
