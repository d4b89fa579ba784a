"""Evaluation: overlap and surface metrics per bone and for the binary all-bone union."""
