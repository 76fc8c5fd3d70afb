"""Retrying a bank call while the bank is away (job states go through it)."""

from __future__ import annotations

import pytest

from carls.bank.errors import BankUnavailableError, NamespaceError
from carls.bank.retry import retry_unavailable


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise BankUnavailableError("cassandra away")
        return "state"


def test_waits_with_doubling_pauses_until_the_bank_answers() -> None:
    waited: list[float] = []
    flaky = Flaky(failures=6)
    assert retry_unavailable(flaky, "read", wait=waited.append) == "state"
    assert waited == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert flaky.calls == 7


def test_gives_up_when_told_and_raises_the_last_failure() -> None:
    waited: list[float] = []
    flaky = Flaky(failures=10)
    with pytest.raises(BankUnavailableError):
        retry_unavailable(flaky, "write", stop=lambda pause: pause > 1.0, wait=waited.append)
    assert waited == [0.5, 1.0]
    assert flaky.calls == 3


def test_other_errors_are_not_retried() -> None:
    def missing() -> None:
        raise NamespaceError("no such namespace")

    with pytest.raises(NamespaceError):
        retry_unavailable(missing, "read", wait=lambda _: pytest.fail("must not wait"))
