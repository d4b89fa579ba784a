"""What a dataset is: spacings, shapes, foreground intensities and class sizes (dataset_fingerprint.json)."""

from kneeseg.fingerprint.extract import (
    CaseFingerprint,
    Fingerprint,
    IntensityStats,
    extract_fingerprint,
    mask_bbox,
    nonzero_mask,
)

__all__ = ["CaseFingerprint", "Fingerprint", "IntensityStats", "extract_fingerprint", "mask_bbox", "nonzero_mask"]
