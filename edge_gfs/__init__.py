"""edge-gfs: a streaming perception node that learns new classes from a few examples (CAPL, CVPR 2022)."""

import os

__version__ = "0.1.0"

# A second wall against decompression bombs, under wire/protocol.py's header checks: OpenCV's decoders refuse an
# image above this many pixels before allocating it. OpenCV reads the variable once, when cv2 is first imported,
# which is why it is set here, before any edge_gfs module imports cv2. Equal to protocol.Limits.max_image_pixels
# (a test keeps them equal); an embedding program that imported cv2 first keeps OpenCV's own limit (2^30).
DECODER_MAX_PIXELS = 4096 * 4096
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DECODER_MAX_PIXELS))
