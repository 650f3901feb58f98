"""The ranked queue and its starvation lane."""

from __future__ import annotations

import pytest

from lamps.scheduler.policy import RankedQueue


def test_pops_by_rank_then_tiebreak_then_insertion() -> None:
    queue = RankedQueue[str]()
    queue.push("c", 2.0, 0.0)
    queue.push("b", 1.0, 5.0)
    queue.push("a", 1.0, 1.0)
    queue.push("d", 2.0, 0.0)
    assert queue.ranked() == ["a", "b", "c", "d"]
    assert [queue.pop() for _ in range(4)] == ["a", "b", "c", "d"]
    with pytest.raises(IndexError):
        queue.pop()
    assert queue.peek() is None


def test_remove_and_duplicates() -> None:
    queue = RankedQueue[str]()
    queue.push("a", 1.0)
    queue.push("b", 2.0)
    with pytest.raises(KeyError, match="already queued"):
        queue.push("a", 0.0)
    assert queue.remove("a")
    assert not queue.remove("a")
    assert "a" not in queue
    assert len(queue) == 1
    assert queue.pop() == "b"


def test_a_request_passed_over_threshold_times_moves_to_the_head_lane() -> None:
    queue = RankedQueue[str](starvation_threshold=3)
    queue.push("big", 100.0)
    queue.push("medium", 50.0)
    for index in range(3):
        queue.push(f"small{index}", 1.0)
    assert [queue.pop() for _ in range(3)] == ["small0", "small1", "small2"]
    queue.push("fresh", 0.5)
    # Both were passed over three times; the lane keeps their arrival order.
    assert queue.starved() == ["big", "medium"]
    assert queue.starved_total == 2
    assert queue.ranked() == ["big", "medium", "fresh"]
    assert [queue.pop() for _ in range(3)] == ["big", "medium", "fresh"]
    assert len(queue) == 0


def test_requests_that_arrive_later_are_not_counted_as_passed_before_they_arrive() -> None:
    queue = RankedQueue[str](starvation_threshold=2)
    queue.push("a", 1.0)
    queue.pop()
    queue.push("big", 10.0)
    queue.push("s", 1.0)
    assert queue.pop() == "s"
    assert queue.starved() == []


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RankedQueue[str](starvation_threshold=0)


def test_passed_over_counts_admissions_ahead_of_a_key() -> None:
    queue = RankedQueue[str](starvation_threshold=10)
    queue.push("big", 100.0)
    queue.push("a", 1.0)
    queue.push("b", 2.0)
    assert queue.passed_over("big") == 0
    queue.pop()
    queue.pop()
    assert queue.passed_over("big") == 2


def test_a_restored_count_carries_a_request_into_the_lane_sooner() -> None:
    queue = RankedQueue[str](starvation_threshold=3)
    queue.push("old", 100.0, passed_over=2)
    queue.push("new", 100.0)
    queue.push("small", 1.0)
    assert queue.pop() == "small"
    assert queue.starved() == ["old"]
    assert queue.passed_over("old") == 3
    with pytest.raises(ValueError, match="negative"):
        queue.push("bad", 1.0, passed_over=-1)
