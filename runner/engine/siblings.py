"""The jobs of a split's sibling shards, read from their journals (``run --siblings GLOB``).

Shards of one run that share keys are one owner: a job a sibling holds is never a lost
POST's candidate here, and on an exclusive account never cancelled as ours. The folders are
those the glob names (found again at each look, so a sibling started later is found), each a
shard of the same split (its ``krea-batch.json`` says so), our own folder left out. Each
journal is read from where the last look stopped: a look costs the lines written since.

A sibling's POST whose answer is not in its journal yet (a ``submitting`` line alone) may
have made a job no journal names: while one is, nothing in a window is proven ours.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from runner.outputs.identity import read_identity
from runner.outputs.layout import IDENTITY_NAME, Layout
from runner.state.events import decode
from runner.state.ledger import RunLedger, apply_to_states
from runner.state.phase import Phase

log = logging.getLogger("runner.engine.submitter")


@dataclass(slots=True)
class SiblingJobs:
    """What the siblings' journals said at one look."""

    ids: set[str] = field(default_factory=set)  # remote jobs a sibling holds (or held)
    pending: int = 0  # sibling POSTs whose answer is not journaled: their jobs are unnamed


@dataclass(slots=True)
class _Journal:
    offset: int = 0
    ledger: RunLedger = field(default_factory=RunLedger)


class Siblings:
    """The sibling shards of ``own`` (a shard ``shard`` of a split) that ``pattern`` names."""

    def __init__(self, pattern: str, own: Path, shard: tuple[int, int] | None) -> None:
        self.pattern = pattern
        self.own = own.resolve()
        self.count = shard[1] if shard is not None else None
        self._journals: dict[Path, _Journal] = {}
        self._refused: set[Path] = set()  # folders that are no sibling (said once)

    def read(self) -> SiblingJobs:
        """The siblings' jobs now."""
        seen = SiblingJobs()
        for folder in self._folders():
            journal = self._journals.setdefault(folder, _Journal())
            self._catch_up(Layout(folder).journal, journal)
            seen.ids |= journal.ledger.known_ids
            seen.pending += sum(s.phase is Phase.SUBMITTING for s in journal.ledger.states.values())
        return seen

    def _folders(self) -> list[Path]:
        found = []
        for name in sorted(glob.glob(self.pattern)):
            folder = Path(name).resolve()
            if folder == self.own or not folder.is_dir() or folder in self._refused:
                continue
            if folder in self._journals or self._is_sibling(folder):
                found.append(folder)
        return found

    def _is_sibling(self, folder: Path) -> bool:
        identity = read_identity(folder / IDENTITY_NAME)
        shard = identity.shard if identity is not None else None
        if shard is None or (self.count is not None and shard[1] != self.count):
            log.warning("--siblings: %s is no shard of this split: its jobs are not read", folder)
            self._refused.add(folder)
            return False
        return True

    @staticmethod
    def _catch_up(path: Path, journal: _Journal) -> None:
        """Fold the whole lines written since the last look (a torn last one waits)."""
        try:
            with path.open("rb") as handle:
                handle.seek(journal.offset)
                data = handle.read()
        except OSError:
            return  # not started yet, or gone: nothing to know of it
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            event = decode(line) if isinstance(line, dict) else None
            if event is not None:
                apply_to_states(journal.ledger, event)
        journal.offset += end
