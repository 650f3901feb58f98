"""What the heads predict: output lengths as the paper's 50 bins of 10 tokens (PAPER.md section 7),
and tools by name, with one class for requests that call none."""

from __future__ import annotations

from dataclasses import dataclass

# The tool class of requests that finish without calling a tool.
NO_TOOL = "none"


@dataclass(frozen=True, slots=True)
class Bins:
    """`count` bins of `width` tokens; the last bin holds every length from its start upwards."""

    width: int = 10
    count: int = 50

    def __post_init__(self) -> None:
        if self.width < 1 or self.count < 2:
            raise ValueError(f"bins need width >= 1 and count >= 2, got {self.width}x{self.count}")

    def of(self, tokens: int) -> int:
        """The bin holding `tokens` (negative counts fall in bin 0)."""
        return min(max(tokens, 0) // self.width, self.count - 1)

    def centre(self, index: int) -> int:
        """The length a bin predicts: its centre, rounded down (bin 0 of width 10 predicts 5)."""
        if not 0 <= index < self.count:
            raise ValueError(f"bin {index} is outside 0-{self.count - 1}")
        return index * self.width + self.width // 2
