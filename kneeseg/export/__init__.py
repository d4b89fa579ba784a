"""Exports people look at: STL bone models and QC overlay PNGs."""
