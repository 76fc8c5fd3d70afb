"""The Prometheus side: serving /metrics beside another process on the same port, the
collectors a scrape reads, the campaigns a worker hears of, dead-letter reasons as labels."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carls.makers.campaigns import CampaignTracker
from carls.schemas import ProgressEvent
from carls.streams import metrics


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_taken_port_moves_the_metrics_to_the_next_free_one(taken_port: int) -> None:
    served = metrics.serve(taken_port, "127.0.0.1", "test")
    assert served is not None
    try:
        assert served.port != taken_port and taken_port < served.port < taken_port + 16
        metrics.DEAD_LETTERS.labels("UnregisteredIds").inc()
        got = _scrape(served.url)
        assert got[("carls_dead_letters_total", (("reason", "UnregisteredIds"),))] >= 1
    finally:
        served.close()


def test_no_metrics_are_served_for_a_negative_port() -> None:
    assert metrics.serve(-1) is None


def test_a_collector_is_read_at_each_scrape_and_a_failing_one_breaks_nothing() -> None:
    value = {"n": 1.0}
    ok = metrics.register(
        lambda: [metrics.gauge("carls_test_value", "A test gauge.", {(): value["n"]}, [])]
    )

    def boom() -> list[object]:
        raise RuntimeError("broken collector")

    bad = metrics.register(boom)  # type: ignore[arg-type]
    served = metrics.serve(0, "127.0.0.1", "test")
    assert served is not None
    try:
        assert _scrape(served.url)[("carls_test_value", ())] == 1.0
        value["n"] = 7.0
        assert _scrape(served.url)[("carls_test_value", ())] == 7.0
    finally:
        served.close()
        metrics.unregister(ok)
        metrics.unregister(bad)


def test_staleness_buckets_count_whole_steps_below_each_edge() -> None:
    totals = metrics._StalenessTotals()
    edges = (0, 50, 100)
    totals.add("pseudo_label", edges, [0, 3, 1, 2], 3 * 10 + 60 + 2 * 500)
    (fam,) = totals.families()
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert samples[("carls_knowledge_staleness_steps_bucket", "49")] == 3
    assert samples[("carls_knowledge_staleness_steps_bucket", "99")] == 4
    assert samples[("carls_knowledge_staleness_steps_bucket", "+Inf")] == 6
    assert samples[("carls_knowledge_staleness_steps_count", None)] == 6
    assert samples[("carls_knowledge_staleness_steps_sum", None)] == 1090


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (ValueError("x"), "ValueError"),
        ("UnregisteredIds", "UnregisteredIds"),
        ("NoCheckpoint", "NoCheckpoint"),
        ("labels of ns step 3 not propagated: bad", "Other"),
    ],
)
def test_dead_letter_reasons_are_error_types_never_free_text(
    error: BaseException | str, label: str
) -> None:
    assert metrics.error_label(error) == label


def _event(campaign: str, kind: str, processed: int, total: int | None) -> ProgressEvent:
    return ProgressEvent(
        namespace="ns",
        kind=kind,
        step=5,
        processed=processed,
        total=total,
        worker="w",
        campaign=campaign,
        at=time.time(),
    )


def _families(tracker: CampaignTracker) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for fam in tracker.families()
        for s in fam.samples
    }


def test_campaigns_are_in_flight_from_their_announcement_until_every_kind_is_made() -> None:
    tracker = CampaignTracker()
    tracker.take(_event("before-me", "embedding", 10, None))  # announced before: unknown
    tracker.take(_event("c1", "embedding", 15, None))  # came ahead of its announcement
    tracker.take(_event("c1", "embedding", 0, 100))  # the announcement
    tracker.take(_event("c1", "embedding", 25, None))
    tracker.take(_event("c1", "prediction", 20, None))
    got = _families(tracker)
    assert got[("carls_campaigns_in_flight", ())] == 1  # not before-me
    assert got[("carls_campaign_coverage_ratio", ("embedding",))] == pytest.approx(0.4)
    assert got[("carls_campaign_coverage_ratio", ("prediction",))] == pytest.approx(0.2)
    tracker.take(_event("c1", "embedding", 60, None))
    tracker.take(_event("c1", "prediction", 80, None))
    assert _families(tracker)[("carls_campaigns_in_flight", ())] == 0


def test_a_campaign_nothing_is_heard_of_is_forgotten() -> None:
    tracker = CampaignTracker(forget_s=0.0)
    tracker.take(_event("c1", "embedding", 0, 100))
    tracker.take(_event("c1", "embedding", 10, None))
    time.sleep(0.01)
    assert tracker.in_flight() == {}
