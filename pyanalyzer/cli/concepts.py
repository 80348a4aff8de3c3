"""``pyanalyzer concepts``: make and inspect Broden-format concept datasets.

Errors are raised as :class:`~pyanalyzer.errors.UserInputError`; ``pyanalyzer.cli.main`` prints
them on one line and exits with code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from pyanalyzer.cli.options import Outputs, json_option

__all__ = ["concepts"]


@click.group()
def concepts() -> None:
    """Concept datasets for network dissection (Broden format).

    A dataset is a folder with index.csv, label.csv, category.csv, c_<category>.csv and
    images/, as released with Network Dissection (Bau et al., CVPR 2017); the original
    broden1_224 / broden1_227 folders are read unchanged.
    """


def _finish(root: Path, as_json: bool) -> None:
    """The dataset written: its path and a summary line, or with --json its summary."""
    from pyanalyzer.data.broden import BrodenDataset

    s = BrodenDataset(root).summary()
    if as_json:
        click.echo(json.dumps({"path": str(root), "summary": s}, indent=2))
        return
    cats = ", ".join(f"{c['name']} {c['labels']}" for c in s["categories"])
    click.echo(str(root))
    click.echo(
        f"{s['images']} images, {s['labels']} labels ({cats}), "
        f"segmentation {s['seg_size'][0]}x{s['seg_size'][1]}"
    )


@concepts.command()
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option("--n-images", default=1000, show_default=True, type=int, help="Number of scenes.")
@click.option(
    "--size", default=64, show_default=True, type=int, help="Image side in pixels (>= 16)."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Scene seed.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@json_option
def synth(out: str, n_images: int, size: int, seed: int, overwrite: bool, as_json: bool) -> None:
    """Write synthetic scenes with exact colour, shape, texture and scene labels.

    Pixel-level categories color, shape and texture; image-level scene and texture (the main
    object's). Segmentations are half the image size, as in Broden.
    """
    from pyanalyzer.data.broden import synth_dataset

    outputs = Outputs()
    outputs.folder(out, "output folder")  # checked now; the parameters by synth_dataset
    with outputs.writing():
        path = synth_dataset(out, n_images=n_images, size=size, seed=seed, overwrite=overwrite)
    _finish(path, as_json)


@concepts.command()
@click.option("--images", "images", required=True, type=click.Path(), help="Folder of images.")
@click.option(
    "--masks", "masks", required=True, type=click.Path(),
    help="Folder of index masks: palette (VOC SegmentationClass) or single-channel PNGs, "
    "matched to images by file stem; 0 = background, 255 = ignore.",
)  # fmt: skip
@click.option(
    "--labels", "labels", required=True, type=click.Path(),
    help="Class names: one per line (line i = mask index i, line 0 = background), "
    "or 'index,name' CSV lines.",
)  # fmt: skip
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--category", default="object", show_default=True, help="Category of the mask classes."
)
@click.option("--no-colors", is_flag=True, help="Do not add Broden's eleven colour concepts.")
@click.option("--size", type=int, default=None, help="Resize images and masks to SIZE x SIZE.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@json_option
def build(
    images: str,
    masks: str,
    labels: str,
    out: str,
    category: str,
    no_colors: bool,
    size: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Build a dataset from your own images and segmentation masks.

    Class i of --labels becomes label number i; colour concepts (black-c ... yellow-c) are
    named per pixel unless --no-colors. Images must share one size unless --size is given.
    """
    from pyanalyzer.data.broden import build_dataset

    outputs = Outputs()
    outputs.folder(out, "output folder")  # checked now; the inputs by build_dataset
    with outputs.writing():
        path = build_dataset(
            images, masks, labels, out,
            add_colors=not no_colors, category=category, size=size, overwrite=overwrite,
        )  # fmt: skip
    _finish(path, as_json)


@concepts.command()
@click.argument("directory", type=click.Path())
@click.option("--split", default=None, help="Only this split (train, val...).")
@click.option("--check", is_flag=True, help="Decode every image and PNG (slow), not only the CSVs.")
@json_option
def info(directory: str, split: str | None, check: bool, as_json: bool) -> None:
    """Summarise the dataset in DIRECTORY and validate it.

    Reading checks every CSV row and that every file exists; --check also decodes every image
    and segmentation, checking sizes and label numbers.
    """
    from pyanalyzer.data.broden import BrodenDataset

    ds = BrodenDataset(directory, split=split)
    s: dict[str, Any] = ds.summary()
    if check:
        ds.validate(progress=True)
    s["validation"] = "ok: CSVs, files" + (", images and segmentations decoded" if check else "")
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    sizes = ", ".join(f"{h}x{w} ({n})" for h, w, n in s["image_sizes"][:4])
    if len(s["image_sizes"]) > 4:
        sizes += f", ... ({len(s['image_sizes'])} sizes)"
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    rows = [
        ("dataset", s["root"]),
        ("images", f"{s['images']} ({splits})"),
        ("image size", sizes),
        ("seg size", f"{s['seg_size'][0]}x{s['seg_size'][1]}"),
        ("labels", str(s["labels"])),
        ("channels", f"up to {s['max_channels']} PNG, {s['max_image_labels']} image-level"),
        ("label cache", s["cache"] or "none yet"),
        ("validation", s["validation"]),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")
    click.echo()
    click.echo("category    labels  level")
    for c in s["categories"]:
        click.echo(f"{c['name']:<10}  {c['labels']:>6}  {'+'.join(c['levels']) or '-'}")
