"""A folder of your own images (PNG / JPEG), one subfolder per class or none, as a dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vaelab.data.dataset import Dataset
from vaelab.errors import InputError
from vaelab.memory import FLOAT_BYTES, check_fits

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# ITU-R 601-2 luma, the weights PIL's convert("L") uses.
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _is_image(path: Path) -> bool:
    # Hidden files are skipped: macOS leaves "._name.png" resource forks next to real images.
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
        and path.is_file()
    )


def _read_image(path: Path) -> Tensor:
    """One image as float32 (C, H, W) in [0, 1] with C = 1 (grey) or 3 (RGB)."""
    try:
        if path.suffix.lower() == ".png":
            import matplotlib.image

            # PNGs come back as floats in [0, 1], whatever their bit depth.
            array = np.asarray(matplotlib.image.imread(path), dtype=np.float32)
        else:
            try:
                from PIL import Image
            except ImportError as e:
                raise ImportError(
                    f"reading JPEG {path} needs Pillow (pip install pillow), or convert it to PNG"
                ) from e
            with Image.open(path) as opened:
                im = opened if opened.mode in ("L", "RGB") else opened.convert("RGB")  # CMYK, palette, ... JPEGs
                array = np.asarray(im, dtype=np.float32) / 255.0
    except ImportError:
        raise
    except Exception as e:  # any decoder failure means the same to the user
        raise InputError(f"cannot read image {path}: {e}") from e

    image = torch.from_numpy(np.ascontiguousarray(array))
    if image.ndim == 2:
        return image[None]  # (1, H, W)
    if image.ndim == 3 and image.shape[2] in (2, 4):
        # Composite over black: transparent pixels become background (0), as in MNIST.
        alpha = image[:, :, -1:]
        image = image[:, :, :-1] * alpha
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise InputError(f"cannot read image {path}: unexpected array shape {tuple(array.shape)}")
    return image.permute(2, 0, 1)  # (C, H, W)


def load_image_folder(
    path: str | os.PathLike[str], size: int = 28, grayscale: bool = True
) -> Dataset:
    """Load PNG / JPEG images from a folder, one class per subfolder or all unlabelled.

    Layouts:
        ``path/<class>/**/*.png``: labelled; labels index the sorted class folder names.
        ``path/*.png``: unlabelled (labels None).
    Images may have any size; each is resized (bilinear, antialiased) to size x size.

    Args:
        path: the folder.
        size: output height and width in pixels.
        grayscale: average colour to one luma channel; else keep 3 RGB channels (grey images
            are repeated).

    Returns:
        Dataset with x (N, C * size * size) float32 in [0, 1], image_shape (C, size, size) with
        C = 1 if grayscale else 3, and labels (N,) int64 + label_names when there are classes.

    Raises:
        FileNotFoundError: the folder does not exist or holds no images.
        ValueError: images both at the top level and in subfolders; an unreadable image.
    """
    root = Path(path).expanduser()
    looked_for = ", ".join(IMAGE_EXTENSIONS)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist or is not a folder; expected a folder of "
            f"{looked_for} files (or one subfolder per class)"
        )
    if size < 1:
        raise InputError(f"size must be a positive number of pixels, got {size}")

    top_level = sorted(p for p in root.iterdir() if _is_image(p))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_files = {
        d.name: sorted(
            p
            for p in d.rglob("*")
            if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(d).parts)
        )
        for d in class_dirs
    }
    class_files = {name: files for name, files in class_files.items() if files}

    if top_level and class_files:
        raise InputError(
            f"{root} has images both at its top level ({top_level[0].name}, ...) and in "
            f"subfolders ({', '.join(class_files)}); put every image in a class subfolder for "
            f"labelled data, or all of them directly in {root} for unlabelled data"
        )
    files: list[Path]
    if class_files:
        label_names = list(class_files)  # sorted, since class_dirs is
        files = [f for name in label_names for f in class_files[name]]
        labels = torch.tensor(
            [i for i, name in enumerate(label_names) for _ in class_files[name]], dtype=torch.int64
        )
    else:
        label_names, labels, files = None, None, top_level
    if not files:
        raise FileNotFoundError(
            f"no images in {root} or its subfolders (looked for {looked_for}, any case); add "
            f"images or point to the right folder"
        )
    logger.info("loading %d images from %s", len(files), root)

    channels = 1 if grayscale else 3
    # Before any image is read: --image-size 10^9 once overflowed torch's size computation, and
    # a large size was refused only after every image was loaded (audit TR124, IF15).
    check_fits(float(len(files)) * channels * size * size * FLOAT_BYTES,
               f"{len(files):,} images resized to --image-size {size} ({size:,} x {size:,} pixels each)",
               "use a smaller --image-size (28 is the MNIST size)")
    x = torch.empty(len(files), channels, size, size)  # (N, C, size, size)
    for i, file in enumerate(files):
        image = _read_image(file)  # (1 or 3, H, W)
        if grayscale and image.shape[0] == 3:
            image = torch.einsum("chw,c->hw", image, _LUMA)[None]
        elif not grayscale and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        if image.shape[1:] != (size, size):
            image = F.interpolate(
                image[None], size=(size, size), mode="bilinear", align_corners=False,
                antialias=True,
            )[0]  # fmt: skip
        x[i] = image.clamp(0.0, 1.0)

    return Dataset(
        name=f"folder:{root}",
        x=x.reshape(len(files), -1),
        labels=labels,
        label_names=label_names,
        image_shape=(channels, size, size),
    )
