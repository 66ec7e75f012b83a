"""What the emulator saw and billed: its figures, the bodies paid twice, the webhooks due.

``Figures`` is ``EmulatorCore``'s base: it reads the accounts the core opens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from runner.emulator.accounts import Account
from runner.emulator.jobs import EmulatedJob, body_hash
from runner.emulator.statuses import TERMINAL


class Figures:
    """The emulator's figures over its accounts (``EmulatorCore`` sets what it reads)."""

    accounts: dict[str, Account]
    stats: Counter[str]
    submits_by_body: Counter[str]

    @property
    def clock(self) -> Callable[[], float]:
        raise NotImplementedError

    def due_webhooks(self) -> list[EmulatedJob]:
        """The jobs that asked for a webhook and have ended since the last call (once each)."""
        now = self.clock()
        due = []
        for account in self.accounts.values():
            waiting = account.store.awaiting_webhook
            ended = [job for job in waiting.values() if job.status(now) in TERMINAL]
            for job in ended:
                del waiting[job.id]
            due += ended
        return due

    def paid_twice(self) -> list[str]:
        """Request bodies with more than one job billed, or to be billed when it completes
        (a job still running counts: only a cancel or a failure spares it)."""
        now = self.clock()
        billed: Counter[str] = Counter()
        jobs = (job for account in self.accounts.values() for job in account.store.jobs.values())
        for job in jobs:
            if job.billable(now):
                billed[body_hash(job.body)] += 1
        return [body for body, count in billed.items() if count > 1]

    def paid(self) -> int:
        """Jobs billed so far, over every account: those that completed."""
        now = self.clock()
        return sum(account.store.paid(now) for account in self.accounts.values())

    def snapshot(self) -> dict[str, Any]:
        """What the emulator saw: counters, submits per request body, jobs by status."""
        now = self.clock()
        by_status: Counter[str] = Counter()
        for account in self.accounts.values():
            by_status.update(account.store.counts())
        data = {
            **dict(sorted(self.stats.items())),
            "submits_by_body": dict(self.submits_by_body),
            "duplicate_submits": sum(n - 1 for n in self.submits_by_body.values() if n > 1),
            "paid": self.paid(),
            "paid_by_account": {
                account.label: account.store.paid(now) for account in self.accounts.values()
            },
            "paid_twice": len(self.paid_twice()),
            "jobs_by_status": dict(by_status),
            "credits_spent": round(
                sum(account.store.spent(now) for account in self.accounts.values()), 3
            ),
        }
        if len(self.accounts) > 1:
            data["accounts"] = {
                account.label: account.snapshot(now) for account in self.accounts.values()
            }
        return data
