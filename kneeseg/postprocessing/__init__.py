"""Connected-component and morphological post-processing, chosen on cross-validation."""
