"""The worker's heartbeat on held jobs, against a real Redis and Kombu's own restore of unacknowledged jobs."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from kombu import Connection

from core import protocol
from worker import heartbeat

pytestmark = pytest.mark.fast


def test_a_held_job_is_never_restored_and_a_silent_one_is(redis_server, redis_client):
    """Two jobs delivered long ago: the one this worker still holds is refreshed by its heartbeat, so
    Kombu's sweep leaves it; the other, whose worker fell silent, goes back to the queue."""
    with Connection(redis_server.url, transport_options={"visibility_timeout": 5}) as connection:
        queue = connection.SimpleQueue(protocol.QUEUE)
        queue.put({"job": "held"})
        queue.put({"job": "orphaned"})
        held, orphaned = queue.get(timeout=5), queue.get(timeout=5)
        assert redis_client.hlen(protocol.UNACKED_KEY) == 2
        long_ago = time.time() - 60
        redis_client.zadd(protocol.UNACKED_INDEX_KEY, {held.delivery_tag: long_ago,
                                                       orphaned.delivery_tag: long_ago})

        heartbeat.refresh(redis_client, [held.delivery_tag, "acknowledged-meanwhile"])

        queue.channel.qos.restore_visible(num=10, interval=1)  # the sweep every consuming worker runs
        assert redis_client.zrange(protocol.UNACKED_INDEX_KEY, 0, -1) == [held.delivery_tag.encode()]
        assert redis_client.llen(protocol.QUEUE) == 1  # the orphaned job is waiting again
        assert queue.get(timeout=5).payload == {"job": "orphaned"}
        queue.close()


def test_the_held_tags_are_those_of_every_request_celery_keeps(monkeypatch):
    from celery.worker import state

    requests = {"a": SimpleNamespace(message=SimpleNamespace(delivery_tag="tag-a")),
                "b": SimpleNamespace(message=SimpleNamespace(delivery_tag="tag-b")),
                "c": SimpleNamespace()}  # no message (a request made in-process): nothing to refresh
    monkeypatch.setattr(state, "requests", requests)
    assert sorted(heartbeat.held_delivery_tags()) == ["tag-a", "tag-b"]


def test_after_redis_comes_back_the_held_jobs_are_refreshed_at_once_not_a_beat_later(monkeypatch):
    """Jobs held through an outage were not refreshed for its length: the first beat after it must come
    before another worker's sweep (every few seconds) finds them stale and hands them out twice."""
    import redis

    class FrozenRedis:
        def __init__(self):
            self.down, self.refreshed = True, []

        def zadd(self, key, mapping, xx=False):
            if self.down:
                raise redis.exceptions.ConnectionError("Redis is frozen")
            self.refreshed.append(time.monotonic())

    monkeypatch.setattr(heartbeat, "held_delivery_tags", lambda: ["held"])
    client = FrozenRedis()
    beat = heartbeat.Heartbeat(client, interval=4.0).start()
    try:
        time.sleep(4.6)  # the first beat, at 4 s, finds Redis away
        client.down = False
        back = time.monotonic()
        while not client.refreshed and time.monotonic() < back + 5.0:
            time.sleep(0.05)
        # A retry (every RETRY_SECONDS) refreshes them, not the next beat, which would come 3.4 s after Redis
        # came back; the margin is for a loaded machine's scheduling.
        assert heartbeat.RETRY_SECONDS <= 0.5
        assert client.refreshed and client.refreshed[0] - back <= 2.5, (back, client.refreshed)
    finally:
        beat.stop()
