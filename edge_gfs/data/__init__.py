"""Datasets and scoring (CamVid reader, confusion matrices, mIoU)."""
