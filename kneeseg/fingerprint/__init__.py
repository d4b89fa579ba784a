"""What a dataset is: spacings, shapes, foreground intensities and class sizes (dataset_fingerprint.json)."""

from kneeseg.fingerprint.extract import (
    bbox_slices,
    CaseFingerprint,
    Fingerprint,
    IntensityStats,
    extract_fingerprint,
    mask_bbox,
    nonzero_bbox,
    nonzero_mask,
)

__all__ = ["bbox_slices", "CaseFingerprint", "Fingerprint", "IntensityStats", "extract_fingerprint", "mask_bbox", "nonzero_bbox",
           "nonzero_mask"]
