"""The label-map vocabulary shared by every layer: the ignore id, and what makes a mask teachable.

No torch and no sockets here, so the wire (which must not load torch), the model code and the operator window
all check a mask the same way and say the same thing about it.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255  # label value for "unknown / void / not scored"; never a class id

# support modes of a teaching shot: only the object's mask, or the frame's full label map as well
MASK, FULL = "mask", "full"
SUPPORT_MODES = (MASK, FULL)


def support_mode(labels: object | None) -> str:
    """A shot with a full label map gives base context from it (`full`); without, from the model (`mask`)."""
    return MASK if labels is None else FULL


def mask_problem(mask: np.ndarray, what: str = "the mask") -> str | None:
    """Why a boolean/uint8 mask cannot teach a class, as the next step to take; None when it can."""
    painted = int(np.count_nonzero(mask))
    if painted == 0:
        return f"{what} is empty: paint the object to teach (nonzero pixels)"
    if painted == mask.size:
        return f"{what} covers the whole image: paint only the object, so the rest gives context"
    return None
