"""Live progress of a campaign on stderr: what ``edgetailor campaign`` and the demo both show.

Its own module so that host.demo (which runs a campaign) and host.cli.campaign_cmds (which runs the
demo) need not import each other.
"""

from __future__ import annotations

from typing import Any, Self

from rich.console import Console


class LiveProgress:
    """Two rich progress bars on stderr: compression, then jobs across devices."""

    def __init__(self, console: Console, transient: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
        )
        self._compress: Any = None
        self._jobs: Any = None

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        data = event.data
        if event.kind == "compress":
            total = max(int(data.get("total", 1)), 1)
            if self._compress is None:
                self._compress = self.progress.add_task("compress", total=total)
            done = data.get("index", 0) + min(float(data.get("fraction", 0.0)), 0.999)
            if event.message == "candidates ready":
                done = total
            self.progress.update(
                self._compress,
                total=total,
                completed=done,
                description=f"compress {event.message[:60]}",
            )
        elif event.kind == "job" and "total" in data:
            if self._jobs is None:
                self._jobs = self.progress.add_task("measure", total=max(data["total"], 1))
            self.progress.update(
                self._jobs, completed=data["done"], description=f"measure {event.message[:60]}"
            )
        elif event.kind == "job":
            if self._jobs is not None:
                self.progress.update(self._jobs, description=f"measure {event.message[:60]}")
        elif event.kind in ("stage", "candidate"):
            self.say(event.message)

    def say(self, message: str) -> None:
        """One progress message: logged with its time on a terminal; in a pipe or a file, one
        line as it is, never wrapped at the console's width nor split by a source column."""
        if self.console.is_terminal:
            self.console.log(message)
        else:
            self.console.print(message, soft_wrap=True, markup=False, highlight=False)
