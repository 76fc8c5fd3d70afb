"""Errors of the local stack. Each carries a ``hint``: what the user should do about it."""

from __future__ import annotations


class InfraError(Exception):
    """The local stack could not be started, checked or stopped."""

    def __init__(self, message: str, *, hint: str = "", log_tail: str = "") -> None:
        self.hint = hint
        self.log_tail = log_tail
        super().__init__(message)

    def explain(self) -> str:
        """The message, the hint and the server log's tail, ready to print."""
        parts = [str(self)]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        if self.log_tail:
            parts.append("last lines of the server log:\n" + self.log_tail)
        return "\n".join(parts)


class ToolMissingError(InfraError):
    """Java or Maven is absent or too old."""


class PortTakenError(InfraError):
    """A port the stack needs is held by a process that is not ours."""


class StartFailedError(InfraError):
    """A server exited or did not become ready before the deadline."""
