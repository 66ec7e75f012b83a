"""The best wall time any client could reach against a given emulator setup, by simulation.

A perfect client submits as fast as the request rate allows, fills a slot the instant one
frees and learns of every end at once. Job latencies are drawn as the emulator draws them, so
the spread of the distribution (its mean above its median, its slowest job) and the time the
submits alone take under a request limit are counted, which ``limit / median`` ignores.
"""

from __future__ import annotations

import heapq
import random
import statistics

from runner.emulator.config import Latency


def perfect_client_wall(
    jobs: int, limit: int, latency: Latency, submit_rate: float | None, rng: random.Random
) -> float:
    """Seconds until the last of ``jobs`` ends for one draw of latencies."""
    slots = [0.0] * limit  # when each slot is next free
    gap = 0.0 if not submit_rate else 1.0 / submit_rate
    last_end = 0.0
    for n in range(jobs):
        start = max(n * gap, heapq.heappop(slots))
        end = start + latency.sample(rng)
        heapq.heappush(slots, end)
        last_end = max(last_end, end)
    return last_end


def best_possible_wall(
    jobs: int, limit: int, latency: Latency, submit_rate: float | None, trials: int = 200
) -> float:
    """The median over ``trials`` draws of `perfect_client_wall` (seeded: the same each run)."""
    rng = random.Random(20261202)
    walls = [perfect_client_wall(jobs, limit, latency, submit_rate, rng) for _ in range(trials)]
    return statistics.median(walls)
