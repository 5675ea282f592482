"""Concurrent requests for one thing share one run of the work that produces it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

Value = TypeVar("Value")


class SingleFlight(Generic[Value]):
    """The first caller for a key runs the work; callers arriving while it runs wait for its result (or its
    exception) instead of repeating it, e.g. one S3 listing for many `ls` of one directory at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future] = {}

    def run(self, key: Hashable, work: Callable[[], Value]) -> Value:
        """`work()`, or the result of the run of it for `key` already under way.  The work should look at
        its cache first: a caller that missed the cache just before the last run ended starts a new run."""
        with self._lock:
            running = self._running.get(key)
            mine = running is None
            if mine:
                running = self._running[key] = Future()
        if not mine:
            return running.result()
        try:
            value = work()
        except BaseException as exc:
            running.set_exception(exc)
            raise
        else:
            running.set_result(value)
            return value
        finally:
            with self._lock:
                del self._running[key]
