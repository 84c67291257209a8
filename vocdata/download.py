"""Make sure the dataset root holds VOC2012, downloading it with torchvision's own helper."""

from __future__ import annotations

import logging
from pathlib import Path

from torchvision.datasets.utils import download_and_extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT

from vocdata.errors import VocRootNotFoundError
from vocdata.splits import VOC_ROOT_ENV, describe_missing_root

log = logging.getLogger(__name__)

VOC2012 = DATASET_YEAR_DICT["2012"]  # url, filename, md5 and base_dir of VOCtrainval_11-May-2012


def _manual_fix(voc_root: Path) -> str:
    return (
        f"Download {VOC2012['url']} (md5 {VOC2012['md5']}, about 2 GB) by hand and extract it "
        f"so that {voc_root / 'ImageSets' / 'Main'} exists, or point --voc-root / {VOC_ROOT_ENV} "
        f"at an existing VOCdevkit/VOC2012 folder."
    )


def ensure_voc_root(voc_root: Path, download: bool = True) -> Path:
    """Return `voc_root` once it holds a VOC tree; download VOC2012 trainval there if allowed.

    The archive unpacks to `VOCdevkit/VOC2012`, so downloading needs a root that ends in those
    two folders (the default does); the checksum is verified by torchvision.
    """
    voc_root = Path(voc_root)
    if (voc_root / "ImageSets" / "Main").is_dir():
        return voc_root
    if not download:
        raise VocRootNotFoundError(
            f"{describe_missing_root(voc_root)} and downloading is off (--no-download). "
            + _manual_fix(voc_root)
        )
    if voc_root.parts[-2:] != tuple(VOC2012["base_dir"].split("/")):
        raise VocRootNotFoundError(
            f"{describe_missing_root(voc_root)}. The download unpacks to .../VOCdevkit/VOC2012, so "
            f"it can only fill a root ending in those folders. " + _manual_fix(voc_root)
        )
    download_root = voc_root.parent.parent
    log.info("VOC2012 not found at %s: downloading %s", voc_root, VOC2012["url"])
    try:
        download_and_extract_archive(
            VOC2012["url"],
            download_root,
            filename=VOC2012["filename"],
            md5=VOC2012["md5"],
            remove_finished=True,
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError; bad md5 is RuntimeError
        raise VocRootNotFoundError(
            f"VOC root not found at {voc_root} and the download failed ({error}); are you "
            f"offline? " + _manual_fix(voc_root)
        ) from error
    if not (voc_root / "ImageSets" / "Main").is_dir():
        raise VocRootNotFoundError(
            f"Downloaded VOC2012 but {voc_root / 'ImageSets' / 'Main'} is still missing. "
            + _manual_fix(voc_root)
        )
    return voc_root
