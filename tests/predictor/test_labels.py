"""Length bins as the paper has them: 50 of 10 tokens, the last open-ended."""

from __future__ import annotations

import pytest

from lamps.predictor.labels import Bins


@pytest.mark.parametrize(
    ("tokens", "index"), [(0, 0), (9, 0), (10, 1), (489, 48), (490, 49), (5000, 49), (-3, 0)]
)
def test_tokens_fall_in_bins_of_ten_with_the_last_open_ended(tokens: int, index: int) -> None:
    assert Bins().of(tokens) == index


def test_a_bin_predicts_its_centre() -> None:
    assert [Bins().centre(i) for i in (0, 1, 49)] == [5, 15, 495]
    with pytest.raises(ValueError, match="outside 0-49"):
        Bins().centre(50)


def test_degenerate_bins_are_refused() -> None:
    with pytest.raises(ValueError, match="width >= 1"):
        Bins(width=0)
