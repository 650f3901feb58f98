"""What happens to a request's KV cache while its tool call runs."""

from __future__ import annotations

import enum


class Strategy(enum.StrEnum):
    """Preserve keeps the KV on the GPU; Discard frees it and recomputes it on return; Swap copies
    it to CPU memory and back."""

    PRESERVE = "preserve"
    DISCARD = "discard"
    SWAP = "swap"
