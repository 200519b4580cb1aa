"""Deadline timers (``_deadline_timers``): a deadline fires no earlier than its time, whether it
waited in a shared slot or got a loop timer at once, and a cancelled one never fires."""

from __future__ import annotations

import asyncio

from nats_transport._deadline_timers import SLOT, DeadlineTimers


async def _fired_at(timers: DeadlineTimers, delay: float) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()
    when = loop.time() + delay
    timers.call_at(when, lambda: fired.set_result(loop.time()))
    return when, await fired


async def test_a_deadline_beyond_one_slot_waits_in_a_slot_then_fires_at_its_own_time() -> None:
    timers = DeadlineTimers(asyncio.get_running_loop())
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()
    when = loop.time() + 2.5 * SLOT
    timers.call_at(when, lambda: fired.set_result(loop.time()))
    assert timers.pending() == 1  # in a slot: no loop timer of its own yet
    assert await fired >= when
    assert timers.pending() == 0


async def test_a_deadline_within_one_slot_fires_no_earlier_than_its_time() -> None:
    when, at = await _fired_at(DeadlineTimers(asyncio.get_running_loop()), SLOT / 4)
    assert at >= when


async def test_a_deadline_already_past_fires_on_the_next_loop_turn() -> None:
    when, at = await _fired_at(DeadlineTimers(asyncio.get_running_loop()), -1.0)
    assert at >= when


async def test_cancelled_deadlines_never_fire_whether_in_a_slot_or_armed() -> None:
    loop = asyncio.get_running_loop()
    timers = DeadlineTimers(loop)
    ran: list[str] = []
    base = (int(loop.time() / SLOT) + 3) * SLOT  # a slot start at least two slots away
    in_slot = timers.call_at(base - SLOT / 2, ran.append, "in a slot")
    armed = timers.call_at(loop.time() + SLOT / 2, ran.append, "armed at once")
    late = timers.call_at(base + 0.8 * SLOT, ran.append, "cancelled after its slot opened")
    kept = timers.call_at(base + 0.8 * SLOT, ran.append, "kept")
    last: asyncio.Future[None] = loop.create_future()
    timers.call_at(base + 0.9 * SLOT, last.set_result, None)
    in_slot.cancel()
    armed.cancel()
    armed.cancel()  # twice is harmless
    pending_then: list[int] = []

    def cancel_late() -> None:  # runs after the slot at `base` opened, before `late` is due
        pending_then.append(timers.pending())
        late.cancel()

    loop.call_at(base + 0.1 * SLOT, cancel_late)
    await last
    assert ran == ["kept"]
    assert pending_then == [0]  # `late` had a loop timer of its own when it was cancelled
    assert kept.when == base + 0.8 * SLOT


async def test_a_slot_whose_deadlines_are_all_cancelled_gives_up_its_timer() -> None:
    # Calls with long deadlines that end early must not leave a slot and a loop timer behind
    # each until their deadline's time comes.
    loop = asyncio.get_running_loop()
    timers = DeadlineTimers(loop)
    far = [timers.call_at(loop.time() + 3600 + i, print) for i in range(3)]
    assert timers.slots() == 3
    pending_timers = len(loop._scheduled)  # type: ignore[attr-defined]  # asyncio's timer heap
    for deadline in far:
        deadline.cancel()
    assert timers.slots() == 0
    assert timers.pending() == 0
    # Cancelled handles stay in asyncio's heap until it sweeps them: what counts is that they are cancelled.
    assert sum(not handle.cancelled() for handle in loop._scheduled) <= pending_timers - 3  # type: ignore[attr-defined]
    # A near slot keeps its timer when emptied (one call at a time would otherwise cost a timer each).
    timers.call_at(loop.time() + 1, print).cancel()
    assert timers.slots() == 1
