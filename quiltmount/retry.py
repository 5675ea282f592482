"""Trying a call again after a failure, with exponential backoff.

One loop for the two places that retry: S3 reads (`storage/s3.py`: one request, transient failures only, with
jitter) and uploads (`fs/uploads.py`: a whole upload, whatever failed but a missing file).  What is worth
another try, and what a retry is noted as, stays with each caller.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def call_with_retries(call: Callable[[], T], *, attempts: int, pause: float,
                      retry_on: Callable[[Exception], bool],
                      before_retry: Callable[[Exception, int, float], None], jitter: bool = False) -> T:
    """`call()`, tried up to `attempts` times while it raises an exception `retry_on` accepts.

    The pause before a retry starts at `pause` and doubles with each retry; with `jitter` each pause is cut
    to a random 50-100% of it (callers that failed together retry apart).  `before_retry(exc, attempt, pause)`
    runs before each pause (to log or count the retry).  The exception of the last attempt, or one `retry_on`
    refuses, is raised as it is.
    """
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not retry_on(exc):
                raise
            wait = pause * random.uniform(0.5, 1.0) if jitter else pause
            before_retry(exc, attempt, wait)
            time.sleep(wait)
            pause *= 2
    raise AssertionError("unreachable")
