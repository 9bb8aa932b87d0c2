"""Reconnect backoff shared by every connection hubctl keeps (Modbus TCP, the MQTT broker).

Pure: a delay from a failure count and a jitter drawn by the caller.
"""

from __future__ import annotations


def backoff_s(failures: int, jitter: float, *, initial_s: float = 0.5, max_s: float = 30.0) -> float:
    """Delay before connect attempt number `failures` + 1: capped exponential with equal jitter.

    The cap doubles from `initial_s` with each failure up to `max_s`; the delay
    lies in [cap / 2, cap) for `jitter` in [0, 1), so devices that failed
    together do not retry together.
    """
    if failures <= 0:
        return 0.0
    cap = min(max_s, initial_s * 2.0 ** min(failures - 1, 60))
    return cap * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))
