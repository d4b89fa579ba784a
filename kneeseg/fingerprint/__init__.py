"""What a dataset is: spacings, shapes, foreground intensities and class sizes (dataset_fingerprint.json)."""

from kneeseg.fingerprint.extract import (
    CaseFingerprint,
    Fingerprint,
    IntensityStats,
    extract_fingerprint,
    nonzero_bbox,
)

__all__ = ["CaseFingerprint", "Fingerprint", "IntensityStats", "extract_fingerprint", "nonzero_bbox"]
