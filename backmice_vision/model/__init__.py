"""Segmentation models: network factory, bundles, inference, training, calibration, export.

Import-light: torch and MONAI are imported inside the functions that need them.
"""
