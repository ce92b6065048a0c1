"""The inbox watcher: queues every completely written inbox file exactly once (imports no TensorFlow)."""

from __future__ import annotations


def inbox_waiting(settings, client=None) -> int:
    """Files in the inbox the watcher would queue that are not yet done (queued, or not yet seen)."""
    from watcher.inbox import count_waiting

    return count_waiting(settings, client=client)
