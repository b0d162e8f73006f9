"""The line for the one generator: first come, first served; bounded for callers that may be refused."""

from __future__ import annotations

import threading

from rag.answer.turns import GenerationQueue


def test_tickets_are_served_in_arrival_order_one_at_a_time() -> None:
    line = GenerationQueue(limit=10)
    first = line.join()
    assert first is not None and first.wait(0)
    order: list[int] = []
    active, most = [0], [0]
    lock = threading.Lock()
    tickets = [line.join() for _ in range(5)]
    assert [t.ahead for t in tickets if t] == [1, 2, 3, 4, 5]

    def work(i: int) -> None:
        ticket = tickets[i]
        assert ticket is not None
        with ticket:
            assert ticket.wait(30)
            with lock:
                active[0] += 1
                most[0] = max(most[0], active[0])
                order.append(i)
                active[0] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in reversed(range(5))]  # started in reverse
    for t in threads:
        t.start()
    first.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3, 4] and most[0] == 1 and line.waiting == 0


def test_past_the_limit_a_refusable_caller_is_refused_and_the_page_is_not() -> None:
    line = GenerationQueue(limit=1)
    a, b = line.join(), line.join()
    assert a and b and line.join() is None
    page = line.join(refusable=False)
    assert page is not None and page.ahead == 2


def test_a_waiter_that_is_stopped_gives_up_its_place() -> None:
    line = GenerationQueue(limit=5)
    first, second, third = line.join(), line.join(), line.join()
    assert first and second and third
    stop = threading.Event()
    stop.set()
    assert second.wait_unless(stop, poll=0.01) is False
    assert third.ahead == 1  # only `first` is ahead now
    first.release()
    assert third.wait(1)
