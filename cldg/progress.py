"""The one rich console and progress bar style every stage uses (rate and ETA always shown)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)
# What a command was asked to show (the tables of status, compare, approaches, inspect-samples, human-eval score)
# goes to stdout, so that `cldg status > s.txt` holds it; progress, logs and errors stay on stderr.
results = Console()


class RateColumn(ProgressColumn):
    """Items per second, with the unit given as the task field `unit`; nothing for a task made with
    `uneven=True` (the pipeline's stages: seconds to hours each, so a rate would mislead)."""

    def render(self, task) -> Text:
        if task.fields.get("uneven"):
            return Text("")
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")


class EtaColumn(TimeRemainingColumn):
    """rich's time remaining, but none for an `uneven=True` task: an ETA from 6 stages skipped in a second
    said "0:00:01" with hours of training ahead."""

    def render(self, task) -> Text:
        if task.fields.get("uneven"):
            return Text("")
        return Text.assemble("eta ", super().render(task))


class StatusColumn(ProgressColumn):
    """Free-form status (loss, ppl, ...) set with `progress.update(task, status=...)`."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("status", "")))


def make_progress(transient: bool = False) -> Progress:
    """A progress display with description, bar, count, rate, elapsed time, ETA and a free-form status."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
        StatusColumn(),
        console=console,
        transient=transient,
    )
