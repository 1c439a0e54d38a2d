"""edge-gfs: a streaming perception node that learns new classes from a few examples (CAPL, CVPR 2022)."""

__version__ = "0.1.0"
