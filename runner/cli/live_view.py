"""The live view on a terminal: rich progress bars, one per model and a total, and the
run's figures below them. Imported only when stderr is a terminal (rich is not needed else)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

TOTAL = "total"


class Bars(RichProgress):
    """The bars, then the run's figures on a line of their own that wraps at the width."""

    figures = ""

    def __init__(self, console: Console) -> None:
        super().__init__(
            # Any width: names give way first (cut with …), the bar takes what is left,
            # the counts are never cut; the run's figures wrap on lines of their own.
            TextColumn(
                "{task.description}",
                style="bold",
                table_column=Column(no_wrap=True, overflow="ellipsis", max_width=22),
            ),
            BarColumn(bar_width=None),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TaskProgressColumn(table_column=Column(no_wrap=True)),
            console=console,
            refresh_per_second=4,
            expand=True,
        )
        self._rows: dict[str, TaskID] = {}

    def show(self, rows: dict[str, tuple[int, int]], figures: str) -> None:
        """Set each row's finished and total jobs, and the figures line."""
        for name, (finished, total) in rows.items():
            if name not in self._rows:
                self._rows[name] = self.add_task(name, total=total)
            self.update(self._rows[name], completed=finished, total=total)
        self.figures = figures

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.figures:
            yield Text(self.figures, overflow="fold")


def stderr_console() -> Console:
    return Console(stderr=True)
