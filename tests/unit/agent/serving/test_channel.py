"""The worker-thread -> event-loop channels: wake-ups per mode, nothing lost, late results dropped quietly."""

from __future__ import annotations

import asyncio
import threading
import time

from agent.serving.generation import EventChannel, ResultChannel


async def _collect(channel: EventChannel, produce) -> list[list[tuple[str, object]]]:
    batches: list[list[tuple[str, object]]] = []
    thread = threading.Thread(target=produce)

    async def consume() -> None:
        while True:
            batch = await channel.get_batch()
            batches.append(batch)
            if any(kind == "done" for kind, _ in batch):
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)  # the consumer is waiting before the producer starts
    thread.start()
    await asyncio.wait_for(task, 5)
    thread.join()
    return batches


def test_non_streaming_channel_wakes_only_for_the_final_event() -> None:
    async def main() -> list:
        channel = EventChannel(asyncio.get_running_loop(), None)

        def produce() -> None:
            for i in range(50):
                channel.put("delta", str(i))
            channel.put("done", None, final=True)

        return await _collect(channel, produce)

    batches = asyncio.run(main())
    assert len(batches) == 1 and len(batches[0]) == 51


def test_rate_limited_channel_sends_the_first_event_at_once_then_batches() -> None:
    async def main() -> list:
        channel = EventChannel(asyncio.get_running_loop(), 10.0)  # far longer than the test

        def produce() -> None:
            channel.put("delta", "first")
            for i in range(20):
                channel.put("delta", str(i))
            channel.put("done", None, final=True)

        return await _collect(channel, produce)

    batches = asyncio.run(main())
    flat = [v for batch in batches for _, v in batch]
    assert flat == ["first", *[str(i) for i in range(20)], None]
    assert len(batches) <= 2  # "first" alone (maybe with a few more), then the rest with the final event


def test_per_event_channel_loses_nothing_under_a_fast_producer() -> None:
    async def main() -> list:
        channel = EventChannel(asyncio.get_running_loop(), 0.0)

        def produce() -> None:
            for i in range(2000):
                channel.put("delta", i)
            channel.put("done", None, final=True)

        return await _collect(channel, produce)

    batches = asyncio.run(main())
    values = [v for batch in batches for kind, v in batch if kind == "delta"]
    assert values == list(range(2000))


def test_handoff_returns_once_the_consumer_has_taken_the_batch_and_awaits_again() -> None:
    waits: list[float] = []

    async def main() -> list:
        channel = EventChannel(asyncio.get_running_loop(), 0.0, handoff_s=5.0)

        def produce() -> None:
            for i in range(5):
                start = time.perf_counter()
                channel.put("delta", str(i))
                channel.settle()  # as the worker does before its next token
                waits.append(time.perf_counter() - start)
            channel.put("done", None, final=True)

        return await _collect(channel, produce)

    batches = asyncio.run(main())
    # each put waited for its own event to be taken (one batch per event), and was released by the consumer,
    # not by the 5 s cap
    assert batches == [[("delta", str(i))] for i in range(5)] + [[("done", None)]]
    assert max(waits) < 1.0


def test_handoff_waits_at_most_its_cap_for_a_consumer_that_stopped_reading() -> None:
    async def main() -> float:
        channel = EventChannel(asyncio.get_running_loop(), 0.0, handoff_s=0.05)
        reader = asyncio.create_task(channel.get_batch())  # takes one batch, then never asks again
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        thread = threading.Thread(target=lambda: [channel.put("delta", str(i)) for i in range(20)])
        thread.start()
        assert (await asyncio.wait_for(reader, 5))[0] == ("delta", "0")
        await asyncio.to_thread(thread.join)
        return time.perf_counter() - start

    # the first put waits its 50 ms cap (nobody comes back), the other 19 see no waiting consumer: no wait
    assert asyncio.run(main()) < 0.5


def test_result_channel_carries_only_the_final_event_across_threads() -> None:
    async def main() -> tuple[str, object]:
        channel = ResultChannel(asyncio.get_running_loop())

        def produce() -> None:
            for i in range(50):
                channel.put("delta", str(i))  # non-streaming: nothing crosses per token
            channel.put("done", "answer", final=True)

        thread = threading.Thread(target=produce)
        thread.start()
        result = await asyncio.wait_for(channel.future, 5)
        thread.join()
        return result

    assert asyncio.run(main()) == ("done", "answer")


def test_result_channel_tolerates_a_gone_request_and_a_stopped_loop() -> None:
    errors: list[dict] = []

    async def main() -> ResultChannel:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        channel = ResultChannel(loop)
        channel.future.cancel()  # the request's coroutine was cancelled (client gone)
        thread = threading.Thread(target=lambda: channel.put("done", None, final=True))
        thread.start()
        thread.join()
        await asyncio.sleep(0.01)  # the resolve callback runs on a cancelled future without raising
        return channel

    channel = asyncio.run(main())
    assert channel.future.cancelled() and errors == []
    channel.put("error", RuntimeError("late"), final=True)  # the loop is closed now: dropped, no exception
