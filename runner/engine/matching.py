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

All of this holds only if the listing was read over the whole window: ``ListingScan`` says
whether the pages read prove that, whatever order the server lists in. When they do not
(a cursor that repeats, pages without end, an order the stamps contradict), every lost POST
ends ambiguous: nothing is sent again without proof that the first POST created nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from runner.api.skew import STAMP_PRECISION, ClockSkew

MAX_GROUP = 8  # lost POSTs solved together at most; a larger tangle is reported ambiguous
MAX_SEARCH_PAGES = 50  # listing pages one search reads at most before it gives up proving
# Stamps in descending order a search must have read before it takes the listing to be
# newest first (a shuffled listing shows 8 in a row one time in 40,320).
ORDER_EVIDENCE = 8


@dataclass(frozen=True, slots=True)
class LostPost:
    """A POST that went out at ``sent`` and whose answer was lost at ``ended`` (our clock).

    ``before`` is what the server's clock was known to be when it went out.
    """

    key: str
    sent: float
    ended: float
    created: bool = False  # the server answered 2xx, so a job exists for sure
    before: ClockSkew = field(default_factory=ClockSkew)

    def window(self, after: ClockSkew) -> tuple[float, float]:
        """Its window on the server's clock, by the clock as known before it and ``after``."""
        return self.before.hull(after).window(self.sent, self.ended)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed job no journal line claims; ``created`` on the server's clock (None: unknown),
    ``status`` as listed (or as read back after a cancel)."""

    job_id: str
    created: float | None
    status: str = ""


# The statuses of a job that ended: only a completed one is billed.
ENDED = frozenset({"completed", "failed", "cancelled"})


@dataclass(slots=True)
class Matching:
    """What became of each lost POST."""

    adopted: dict[str, Candidate] = field(default_factory=dict)  # key → its job
    resend: list[str] = field(default_factory=list)  # created nothing: send it again
    ambiguous: dict[str, tuple[str, ...]] = field(default_factory=dict)  # key → candidate ids
    unseen: list[str] = field(default_factory=list)  # answered 2xx, yet no job is listed
    doubt: str | None = None  # why the listing proves nothing: every POST is ambiguous


@dataclass(slots=True)
class ListingScan:
    """What the listing pages read so far prove about the server's jobs since ``start``.

    The search may stop before the listing's end only when every stamp read so far came in
    descending order (``ORDER_EVIDENCE`` of them at least, two of them different) and the
    last lies before the window: newest first is then what the server shows, not what we
    assume. Any other order is read to its end. A cursor seen before, or more than
    ``MAX_SEARCH_PAGES`` pages, leave the window unproven (``doubt``). Jobs are kept once
    each, those the folder owns dropped.
    """

    known: Collection[str]  # job ids the folder owns: never anyone's candidate
    sibling_pending: int = 0  # POSTs of sibling shards unanswered as the search began
    jobs: dict[str, Candidate] = field(default_factory=dict)
    pages: int = 0
    doubt: str | None = None
    _cursors: set[str] = field(default_factory=set)
    _last: float | None = None  # the previous stamp, in reading order
    _descending: bool = True
    _stamps: int = 0  # stamps read
    newest: float | None = None  # the latest stamp read
    _shown: bool = False  # two different stamps, newest first

    def feed(self, page: Sequence[Candidate], cursor: str | None, start: float) -> bool:
        """Take in one page; True while the next page (at ``cursor``) must be read."""
        self.pages += 1
        for job in page:
            if job.job_id not in self.known:
                self.jobs.setdefault(job.job_id, job)
            self._order(job.created)
        if cursor is None:
            return False  # the end of the listing: everything was read
        if self._newest_first and self._last is not None and self._last < start:
            return False  # newest first, and already older than the window
        if cursor in self._cursors:
            self.doubt = "the job listing's cursor repeats"
            return False
        if self.pages >= MAX_SEARCH_PAGES:
            self.doubt = f"the job listing goes on past {MAX_SEARCH_PAGES} pages"
            return False
        self._cursors.add(cursor)
        return True

    @property
    def _newest_first(self) -> bool:
        return self._descending and self._shown and self._stamps >= ORDER_EVIDENCE

    def _order(self, stamp: float | None) -> None:
        if stamp is None:
            return  # says nothing of the order (and is in every window anyway)
        self._stamps += 1
        self.newest = stamp if self.newest is None else max(self.newest, stamp)
        if self._last is not None:
            if stamp > self._last + STAMP_PRECISION:
                self._descending = False
            elif stamp < self._last - STAMP_PRECISION:
                self._shown = True
        self._last = stamp


def window_bounds(posts: Sequence[LostPost], after: ClockSkew) -> tuple[float, float]:
    """The span of server time to list: from the earliest window start to the latest end."""
    windows = [p.window(after) for p in posts]
    return min(w[0] for w in windows), max(w[1] for w in windows)


def unknown_clock(posts: Sequence[LostPost], after: ClockSkew) -> bool:
    """Whether the server's clock is unread before some lost POST, or since the answers were
    lost: a jump in between could then hide the job, and nothing can be proven."""
    return not after.measured or any(not p.before.measured for p in posts)


def match(posts: Sequence[LostPost], jobs: Iterable[Candidate], after: ClockSkew) -> Matching:
    """Match lost POSTs to the unclaimed jobs listed around them (module docstring).

    ``after`` is the server's clock as read after the answers were lost.
    """
    options = _windows(posts, jobs, after)
    result = Matching()
    for group in _groups(posts, options):
        _solve(group, options, result)
    return result


def reconcile(posts: Sequence[LostPost], jobs: Iterable[Candidate], after: ClockSkew) -> Matching:
    """Lost POSTs on an exclusive account, once the jobs in their windows (all ours) were
    read after the unfinished ones were cancelled: a cancelled or failed job is not billed,
    so whichever POST made it may be sent again; only completed ones must find their POST.

    A group whose jobs all ended is solved over its completed jobs alone, split again by the
    completed jobs its POSTs share: a POST with none in its window is sent again; exactly
    one way to give them to POSTs, and they are adopted and the others sent again; several,
    and those POSTs stay ambiguous with their completed jobs as candidates (sending again
    could pay twice). A group with a job not ended (its cancel did not take) stays ambiguous
    with all of them.
    """
    options = _windows(posts, jobs, after)
    result = Matching()
    for group in _groups(posts, options):
        held = {j.job_id: j for p in group for j in options[p.key]}
        if len(held) < sum(p.created for p in group):  # a job surely made is not listed yet
            _solve(group, options, result)
            continue
        if any(j.status not in ENDED for j in held.values()):
            for post in group:
                result.ambiguous[post.key] = tuple(j.job_id for j in options[post.key])
            continue
        paid = {p.key: [j for j in options[p.key] if j.status == "completed"] for p in group}
        # Whether a POST made a job no longer matters once that job is cancelled or failed;
        # POSTs that share no completed job are apart (one with none in its window goes again).
        loose = [LostPost(p.key, p.sent, p.ended, False, p.before) for p in group]
        for part in _groups(loose, paid):
            _solve(part, paid, result)
    return result


def unproven(
    posts: Sequence[LostPost], jobs: Iterable[Candidate], after: ClockSkew, doubt: str
) -> Matching:
    """Every lost POST ambiguous, with the jobs its window holds: nothing proves them empty."""
    options = _windows(posts, jobs, after)
    result = Matching(doubt=doubt)
    for post in posts:
        result.ambiguous[post.key] = tuple(j.job_id for j in options[post.key])
    return result


def _windows(
    posts: Sequence[LostPost], jobs: Iterable[Candidate], after: ClockSkew
) -> dict[str, list[Candidate]]:
    """Each POST's key → the jobs its window holds. A job without a readable creation time
    could be anyone's: it is in every window."""
    jobs = list(jobs)
    options: dict[str, list[Candidate]] = {}
    for post in posts:
        start, end = post.window(after)
        options[post.key] = [j for j in jobs if j.created is None or start <= j.created <= end]
    return options


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
