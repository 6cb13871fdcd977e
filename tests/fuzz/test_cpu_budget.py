"""The fuzzers' CPU-time bound (tests/fuzz/conftest.py `within_cpu`) fails what is slow every
time, and only that."""

from __future__ import annotations

import time

import pytest

from tests.fuzz.conftest import MEASUREMENTS, within_cpu


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_body_slow_every_time_fails_with_each_measurement() -> None:
    calls = 0

    def slow() -> None:
        nonlocal calls
        calls += 1
        burn(0.03)

    with pytest.raises(
        AssertionError, match=r"slow body took (\d+\.\d, ){2}\d+\.\d ms of CPU time \(bound 10 ms\)"
    ):
        within_cpu(0.01, "slow body", slow)
    assert calls == MEASUREMENTS


def test_a_body_slow_once_is_measured_again_and_passes() -> None:
    calls = 0

    def slow_first() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            burn(0.03)
        return "result"

    assert within_cpu(0.01, "hiccup", slow_first) == "result"
    assert calls == 2


def test_what_the_body_raises_is_raised_once_in_time() -> None:
    calls = 0

    def rejects() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        within_cpu(1.0, "rejecting body", rejects)
    assert calls == 1


def test_a_wrong_result_fails_at_once_whatever_its_time() -> None:
    calls = 0

    def wrong() -> None:
        nonlocal calls
        calls += 1
        burn(0.03)
        raise AssertionError("wrong result")

    with pytest.raises(AssertionError, match="wrong result"):
        within_cpu(0.01, "wrong body", wrong)
    assert calls == 1
