"""Progress that moves: redrawn in place on a terminal (a pseudo-terminal here), plain
lines when the output is a file or a pipe, JSON lines for scripts; the coverage watch and
the job follower on scripted looks."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import termios
from collections.abc import Iterator
from typing import Any

import pytest

from carls.cmd_bank import _watch_coverage
from carls.cmd_jobs import follow_job
from carls.progress import Display, Rate, bar, duration

ESC = "\x1b["


@pytest.fixture
def terminal() -> Iterator[tuple[Any, int]]:
    """A pseudo-terminal: what is written to the first is read from the second."""
    leader, follower = pty.openpty()
    out = os.fdopen(follower, "w")
    try:
        yield out, leader
    finally:
        out.close()
        os.close(leader)


def _read(fd: int) -> str:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            return "".join(chunks)
        chunks.append(os.read(fd, 65536).decode())


def _coverage(made: int, total: int = 100, step: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "kind": kind,
            "total": total,
            "newest_step": step,
            "at_newest": made,
            "older": 0,
            "none": total - made,
            "fraction_at_newest": made / total,
            "steps": {str(step): made},
        }
        for kind in ("embedding", "prediction")
    ]


def test_on_a_terminal_the_bars_are_redrawn_in_place(terminal: tuple[Any, int]) -> None:
    out, leader = terminal
    looks = iter([_coverage(10), _coverage(60), _coverage(100)])
    shown = Display(stream=out)  # finds out itself that it writes to a terminal
    assert shown.tty
    assert _watch_coverage(lambda: next(looks), "ns", False, 0.01, 1.0, None, shown)
    out.flush()
    text = _read(leader)
    # three looks of three lines; each look after the first moves the cursor up over the
    # last one and clears each line it redraws
    assert text.count(f"{ESC}3F") == 2, text
    assert text.count(f"{ESC}2K") == 9
    assert "[" + "#" * 24 + "] 100.0%" in text and "done" in text
    assert "ids/s" in text  # a rate once there are two looks


def test_without_a_terminal_plain_lines_say_each_change_once() -> None:
    out = io.StringIO()
    looks = iter([_coverage(10), _coverage(10), _coverage(10), _coverage(60), _coverage(100)])
    shown = Display(stream=out, plain_every_s=0.0)
    assert not shown.tty
    assert _watch_coverage(lambda: next(looks), "ns", False, 0.01, 1.0, None, shown)
    text = out.getvalue()
    assert ESC not in text and "\r" not in text
    heads = [line for line in text.splitlines() if "ids at their kind's newest step" in line]
    # the second look adds a rate (0 ids/s); the third changes nothing and is not written
    assert len(heads) == 4, text
    assert "0 ids/s" in heads[1] and "? left" in heads[1]
    assert heads[-1].endswith("- done")
    assert "200/200" in heads[-1]


def test_json_lines_for_scripts_one_per_look_the_last_done() -> None:
    out = io.StringIO()
    looks = iter([_coverage(0), _coverage(50), _coverage(100)])
    assert _watch_coverage(lambda: next(looks), "ns", True, 0.01, 1.0, None, Display(True, out))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["done"] for r in records] == [False, False, True]
    assert records[1]["ids_per_s"] > 0 and records[1]["eta_s"] is not None
    assert [r["kinds"][0]["at_newest"] for r in records] == [0, 50, 100]


def test_the_watch_stops_at_the_fraction_asked_or_gives_up_at_its_timeout() -> None:
    looks = iter([_coverage(50), _coverage(90)])
    out = io.StringIO()
    assert _watch_coverage(lambda: next(looks), "ns", True, 0.01, 0.9, None, Display(True, out))
    assert len(out.getvalue().splitlines()) == 2
    stuck = io.StringIO()
    assert not _watch_coverage(
        lambda: _coverage(5), "ns", True, 0.01, 1.0, 0.05, Display(True, stuck)
    )


def test_a_new_step_starts_the_rate_over() -> None:
    out = io.StringIO()
    looks = iter(
        [
            _coverage(80, step=5),
            _coverage(90, step=5),
            _coverage(10, step=6),
            _coverage(100, step=6),
        ]
    )
    _watch_coverage(lambda: next(looks), "ns", True, 0.01, 1.0, None, Display(True, out))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[1]["ids_per_s"] > 0
    assert records[2]["ids_per_s"] is None  # not a negative rate from 90 down to 10


def test_following_a_job_shows_its_steps_until_it_ends() -> None:
    states = iter(
        [
            {"state": "running", "step": 0, "steps": 100},
            {"state": "running", "step": 40, "steps": 100, "test_accuracy": 0.5},
            {"state": "succeeded", "step": 100, "steps": 100, "test_accuracy": 0.9},
        ]
    )
    out = io.StringIO()
    final = follow_job(lambda _: next(states), "j1", True, 0.01, Display(True, out))
    assert final is not None and final["state"] == "succeeded"
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["step"] for r in records] == [0, 40, 100]
    assert records[1]["steps_per_s"] > 0 and records[1]["eta_s"] > 0
    assert records[-1]["eta_s"] is None and records[-1]["test_accuracy"] == 0.9


def test_following_an_unknown_job_returns_none_at_once() -> None:
    assert follow_job(lambda _: None, "nope", True, 0.01, Display(True, io.StringIO())) is None


def test_on_a_narrow_terminal_lines_are_cut_to_its_width(terminal: tuple[Any, int]) -> None:
    out, leader = terminal
    fcntl.ioctl(out.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", 24, 30, 0, 0))
    shown = Display(stream=out)
    shown.update(["x" * 50, "short"], {})
    shown.update(["y" * 50], {})  # one line fewer: the rest is cleared
    out.flush()
    text = _read(leader)
    assert "x" * 29 in text and "x" * 30 not in text  # 29 columns: no line wraps
    assert text.endswith(f"{ESC}2K{'y' * 29}\r\n{ESC}J")


def test_bars_rates_and_durations() -> None:
    assert bar(0.5, 4) == "[##..]" and bar(2.0, 2) == "[##]" and bar(-1, 2) == "[..]"
    assert duration(None) == "?" and duration(float("inf")) == "?"
    assert duration(5) == "5 s" and duration(125) == "2 min 05 s"
    assert duration(7300) == "2 h 01 min"
    r = Rate()
    r.add(0, at=0.0)
    r.add(50, at=10.0)
    assert r.per_s == 5.0 and r.eta_s(100) == 10.0


def test_a_running_job_gone_quiet_is_said_to_be_so() -> None:
    import time

    from carls.cmd_jobs import QUIET_S, quiet_for, status_rows

    now = time.time()
    running = {"state": "running", "step": 10, "steps": 100, "heard_at": now - QUIET_S - 60}
    assert quiet_for(running, now) == pytest.approx(QUIET_S + 60)
    assert "may have stopped" in status_rows("j", running)["last heard"]
    assert quiet_for({**running, "heard_at": now - 5}, now) is None
    assert quiet_for({**running, "state": "succeeded"}, now) is None  # ended: not quiet
    assert "last heard" not in status_rows("j", {**running, "heard_at": now})

    out = io.StringIO()
    states = iter([running, {**running, "state": "failed", "heard_at": now}])
    follow_job(lambda _: next(states), "j", False, 0.01, Display(stream=out, plain_every_s=0))
    assert "not heard from for 6 min 00 s: its process may have stopped" in out.getvalue()
