"""The live view on a terminal: rich progress bars, one per model and a total, and the
run's figures below them. Imported only when stderr is a terminal (rich is not needed else).

Whatever the terminal's size, the total and the figures stay on screen: models that do not
fit are folded into one row (``+12 more models``), and the figures break between phrases,
never inside one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Column
from rich.text import Text

from runner.wording import counted, pack

TOTAL = "total"


class Bars(RichProgress):
    """The bars, then the run's figures, laid out to the terminal's width and height."""

    def __init__(self, console: Console) -> None:
        self._screen = console  # read while rich's own __init__ draws the first frame
        self.figures: Sequence[Sequence[str]] = ()  # lines of phrases
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

    def show(self, rows: dict[str, tuple[int, int]], figures: Sequence[Sequence[str]]) -> None:
        """Set each row's finished and total jobs (the total last), and the figures: lines
        of phrases, each line broken between its phrases where the terminal is narrow."""
        for name, (finished, total) in rows.items():
            if name not in self._rows:
                self._rows[name] = self.add_task(name, total=total)
            self.update(self._rows[name], completed=finished, total=total)
        self.figures = figures

    def get_renderables(self) -> Iterable[RenderableType]:
        width, height = self._screen.size
        lines = [line for phrases in self.figures for line in pack(phrases, width)]
        yield self.make_tasks_table(self._fitting(max(2, height - len(lines) - 1)))
        if lines:
            yield Text("\n".join(lines), no_wrap=True, overflow="crop")

    def _fitting(self, room: int) -> list[Task]:
        """The rows that fit in ``room`` lines: the total always; models still running
        before finished ones; those left over folded into one row."""
        tasks = list(self.tasks)
        if len(tasks) <= room:
            return tasks
        *models, total = tasks
        running = [t for t in models if t.total is None or t.completed < t.total]
        kept = set(map(id, (running + [t for t in models if t not in running])[: room - 2]))
        shown = [t for t in models if id(t) in kept]
        folded = [t for t in models if id(t) not in kept]
        more = Task(
            TaskID(-1),
            f"+{counted(len(folded), 'more model')}",
            sum(t.total or 0 for t in folded),
            sum(t.completed for t in folded),
            _get_time=self.get_time,
        )
        return [*shown, more, total]


def stderr_console() -> Console:
    return Console(stderr=True)
