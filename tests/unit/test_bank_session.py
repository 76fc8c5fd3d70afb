"""Statements the driver could not send because every connection was busy are sent again,
as are those safe to repeat that timed out (as often as allowed); every other failure is
reported at once."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import OperationTimedOut, WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy

from carls.bank import session as bank_session
from carls.bank.errors import BankUnavailableError
from carls.bank.session import Call


class _Future:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def result(self) -> Any:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class _Session:
    """Answers each execute_async with the next outcome, recording what was sent."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[Any, Any]] = []

    def execute_async(self, statement: Any, params: Any = None) -> _Future:
        self.sent.append((statement, params))
        return _Future(self.outcomes.pop(0))


def _busy() -> NoHostAvailable:
    return NoHostAvailable("all busy", {"127.0.0.1:9042": ConnectionBusy("overloaded")})


def test_a_statement_refused_by_busy_connections_is_sent_again_until_it_goes_through() -> None:
    s = _Session(_busy(), _busy(), "rows")
    assert Call(s, "INSERT", (1, 2)).result("write") == "rows"
    assert s.sent == [("INSERT", (1, 2))] * 3


def test_any_other_failure_is_reported_at_once() -> None:
    timed_out = NoHostAvailable("no", {"127.0.0.1:9042": OperationTimedOut("slow")})
    s = _Session(timed_out, "rows")
    with pytest.raises(BankUnavailableError, match="write failed"):
        Call(s, "INSERT").result("write")
    assert len(s.sent) == 1


def test_connections_busy_for_longer_than_the_patience_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bank_session, "BUSY_PATIENCE_S", 0.05)
    s = _Session(*[_busy() for _ in range(100)])
    with pytest.raises(BankUnavailableError, match="all busy"):
        Call(s, "INSERT").result("write")
    assert 2 <= len(s.sent) < 100


def test_a_statement_safe_to_repeat_is_sent_again_after_a_timeout_as_often_as_allowed() -> None:
    s = _Session(OperationTimedOut("slow"), WriteTimeout("slow replica", write_type=0), "rows")
    assert Call(s, "DELETE", (1,), timeouts=2).result("drop") == "rows"
    assert s.sent == [("DELETE", (1,))] * 3

    s = _Session(*[OperationTimedOut("slow") for _ in range(3)])
    with pytest.raises(BankUnavailableError, match="drop failed: OperationTimedOut"):
        Call(s, "DELETE", (1,), timeouts=2).result("drop")
    assert len(s.sent) == 3


def test_a_statement_not_marked_safe_to_repeat_is_not_sent_again_after_a_timeout() -> None:
    s = _Session(OperationTimedOut("slow"), "rows")
    with pytest.raises(BankUnavailableError, match="OperationTimedOut"):
        Call(s, "INSERT").result("write")
    assert len(s.sent) == 1
