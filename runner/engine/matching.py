"""Which remote job did a lost POST create? Pure matching of lost submits to listed jobs.

Krea has no idempotency key and its job listing carries no request fields, so the only link
between a POST whose answer was lost and the job it may have created is time: the job was
stamped while the POST was on the wire. After every other POST has settled (so every job id
this folder owns is known and dropped from the listing), each lost POST's window holds the
unclaimed jobs that could be its own.

POSTs whose windows share candidates form one group, solved together. An assignment gives
each candidate to one POST of the group whose window holds it, at most one job per POST, and
exactly one to a POST the server answered 2xx (it surely created a job). Exactly one such
assignment: each POST adopts its job, or was sent in vain and is sent again. None or several
(another client's job in the window, two lost POSTs that cannot be told apart): nothing is
sent again, and the group's POSTs end ambiguous with their candidates listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from runner.skew import ClockSkew

MAX_GROUP = 8  # lost POSTs solved together at most; a larger tangle is reported ambiguous


@dataclass(frozen=True, slots=True)
class LostPost:
    """A POST that went out at ``sent`` and whose answer was lost at ``ended`` (our clock)."""

    key: str
    sent: float
    ended: float
    created: bool = False  # the server answered 2xx, so a job exists for sure


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed job no journal line claims; ``created`` on the server's clock (None: unknown)."""

    job_id: str
    created: float | None


@dataclass(slots=True)
class Matching:
    """What became of each lost POST."""

    adopted: dict[str, Candidate] = field(default_factory=dict)  # key → its job
    resend: list[str] = field(default_factory=list)  # created nothing: send it again
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key → candidate ids
    unseen: list[str] = field(default_factory=list)  # answered 2xx, yet no job is listed


def window_bounds(posts: Sequence[LostPost], skew: ClockSkew) -> tuple[float, float]:
    """The span of server time to list: from the earliest window start to the latest end."""
    windows = [skew.window(p.sent, p.ended) for p in posts]
    return min(w[0] for w in windows), max(w[1] for w in windows)


def match(posts: Sequence[LostPost], jobs: Iterable[Candidate], skew: ClockSkew) -> Matching:
    """Match lost POSTs to the unclaimed jobs listed around them (module docstring)."""
    jobs = list(jobs)
    options: dict[str, list[Candidate]] = {}
    for post in posts:
        start, end = skew.window(post.sent, post.ended)
        # A job without a readable creation time could be anyone's: it is in every window.
        options[post.key] = [j for j in jobs if j.created is None or start <= j.created <= end]
    result = Matching()
    for group in _groups(posts, options):
        _solve(group, options, result)
    return result


def _groups(posts: Sequence[LostPost], options: dict[str, list[Candidate]]) -> list[list[LostPost]]:
    """Posts joined by shared candidates (union-find over candidate ids)."""
    parent = {p.key: p.key for p in posts}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    owner: dict[str, str] = {}
    for post in posts:
        for job in options[post.key]:
            if job.job_id in owner:
                parent[root(post.key)] = root(owner[job.job_id])
            else:
                owner[job.job_id] = post.key
    groups: dict[str, list[LostPost]] = {}
    for post in posts:
        groups.setdefault(root(post.key), []).append(post)
    return list(groups.values())


def _solve(group: list[LostPost], options: dict[str, list[Candidate]], out: Matching) -> None:
    jobs = {j.job_id: j for p in group for j in options[p.key]}
    if not jobs:
        for post in group:  # alone in its window, and nothing there
            (out.unseen if post.created else out.resend).append(post.key)
        return
    solutions = _assignments(group, options, list(jobs.values())) if len(group) <= MAX_GROUP else []
    if len(solutions) == 1:
        [chosen] = solutions
        for post in group:
            if post.key in chosen:
                out.adopted[post.key] = chosen[post.key]
            else:
                out.resend.append(post.key)
        return
    for post in group:
        out.ambiguous[post.key] = tuple(j.job_id for j in options[post.key])


def _assignments(
    group: list[LostPost], options: dict[str, list[Candidate]], jobs: list[Candidate]
) -> list[dict[str, Candidate]]:
    """Up to two assignments of every job to a distinct post whose window holds it."""
    found: list[dict[str, Candidate]] = []
    taken: dict[str, Candidate] = {}
    must = {p.key for p in group if p.created}
    holders = {j.job_id: [p.key for p in group if j in options[p.key]] for j in jobs}

    def place(index: int) -> None:
        if len(found) > 1:
            return
        if index == len(jobs):
            if must <= taken.keys():
                found.append(dict(taken))
            return
        job = jobs[index]
        for key in holders[job.job_id]:
            if key not in taken:
                taken[key] = job
                place(index + 1)
                del taken[key]

    place(0)
    return found
