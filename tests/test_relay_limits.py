"""The token buckets behind the JOIN/LEAVE rate and the membership budget."""

from __future__ import annotations

from server.limits import AddressBudget, Bucket


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = Bucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_address_budget_is_per_address_and_per_hour() -> None:
    budget = AddressBudget(per_hour=2)
    assert budget.take("a", 0.0)
    assert budget.take("a", 0.0)
    assert not budget.take("a", 0.0)
    assert budget.take("b", 0.0)
    assert budget.take("a", 1800.0)


def test_address_budget_forgets_addresses_with_their_whole_budget() -> None:
    budget = AddressBudget(per_hour=2)
    budget.take("a", 0.0)
    budget.take("b", 3000.0)
    budget.forget_full(3600.0)
    assert len(budget) == 1
    budget.forget_full(7200.0)
    assert len(budget) == 0
