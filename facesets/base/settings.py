"""Defaults shared by the library and the command line (no heavy imports here)."""

from __future__ import annotations

from enum import StrEnum

# Refuse images with more pixels than this, read from the header before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 200_000_000
# Refuse files larger than this before reading them (a sparse file or a device named like a photo); far above
# any real photo (a 100 MP 16-bit TIFF is about 600 MB).
DEFAULT_MAX_BYTES = 1 << 30
# The smallest new face set (export) and the smallest new person (persons in the store).
DEFAULT_MIN_FACES = 5
DEFAULT_PERSON_MIN_FACES = 3
# Detector input sizes for detectors with a dynamic input: InsightFace 2's FaceAnalysis default.
DEFAULT_DET_SIZES = (128, 640)


class Mode(StrEnum):
    """How faithfully to follow InsightFace's reference pipeline."""

    # Full decode, square detector input: the faces and embeddings of InsightFace's FaceAnalysis.
    REFERENCE = "reference"
    # Big JPEGs decoded at 1/2, 1/4 or 1/8, keeping a long side of 1280 (finer only for faces that need it),
    # detector input padded to a multiple of 32: less work, keypoints and embeddings move slightly.
    FAST = "fast"
