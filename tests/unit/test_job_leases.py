"""A job's lease under writes whose answers were lost: the bank applied a renewal (or a
take) but the trainer timed out waiting and holds the older value. The lease is still
its own, and it must not stop the job as if another trainer had taken it."""

from __future__ import annotations

from carls.bank.jobs import MemoryJobStore


def test_a_renewal_whose_answer_was_lost_still_renews_the_lease() -> None:
    jobs = MemoryJobStore()
    held = jobs.take("job-1", "trainer-a", 1, None)
    assert held is not None
    assert jobs.renew("job-1", held) is not None  # applied; its answer never came back
    again = jobs.renew("job-1", held)  # the trainer tries again with the value it knew
    assert again is not None and (again.trainer, again.attempt) == ("trainer-a", 1)
    assert jobs.lease("job-1") == again
    assert jobs.renew("job-1", again) is not None


def test_a_lease_another_trainer_took_is_not_renewed() -> None:
    jobs = MemoryJobStore()
    held = jobs.take("job-1", "trainer-a", 1, None)
    assert held is not None
    taken = jobs.take("job-1", "trainer-b", 2, held)  # after trainer-a went silent
    assert taken is not None
    assert jobs.renew("job-1", held) is None
    assert jobs.lease("job-1") == taken


def test_a_released_lease_is_not_renewed_and_a_take_whose_answer_was_lost_holds() -> None:
    jobs = MemoryJobStore()
    held = jobs.take("job-1", "trainer-a", 1, None)
    assert held is not None
    assert jobs.take("job-1", "trainer-a", 1, None) is not None  # the same take, sent again
    assert jobs.take("job-1", "trainer-b", 1, None) is None
    current = jobs.lease("job-1")
    assert current is not None
    jobs.release("job-1", current)
    assert jobs.renew("job-1", current) is None
