"""Inference: sliding-window prediction with test-time mirroring and fold ensembling."""
