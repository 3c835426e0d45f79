"""Per-IP limits for anonymous share-link visitors: a fixed one-hour window counted in the cache (Redis)."""

import time

from django.conf import settings
from django.core.cache import cache

from apps.chat.services import ChatError

WINDOW_SECONDS = 3600


class RateLimited(ChatError):
    """Too many messages from one address; the message says when to come back."""


def anonymous_message_allow(*, ip: str) -> None:
    """Count one message from `ip`, or raise RateLimited when its hourly allowance is used up."""
    limit = settings.ATELIER_ANONYMOUS_MESSAGES_PER_HOUR
    window = int(time.time()) // WINDOW_SECONDS
    key = f"atelier:rate:anonymous:{ip or 'unknown'}:{window}"
    cache.add(key, 0, WINDOW_SECONDS)  # only the first message of the window sets the expiry
    count = cache.incr(key)
    if count > limit:
        minutes = max(1, ((window + 1) * WINDOW_SECONDS - int(time.time())) // 60)
        raise RateLimited(
            f"Visitors without an account may send {limit} messages an hour from one address. "
            f"Try again in {minutes} minutes, or sign in."
        )
