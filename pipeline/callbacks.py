"""Engine callbacks that belong to the orchestration layer: DVCLive curves and a Rich progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ffl.callbacks import Callback


class DVCLiveCallback(Callback):
    """One DVCLive step per epoch. On resume the curves are rewritten from the checkpoint's history,
    so epochs logged after the last checkpoint are not duplicated and none before it are lost."""

    def __init__(self, directory: str | Path):
        self.directory = str(directory)
        self.live = None

    def _log(self, metrics: dict) -> None:
        for name, value in metrics.items():
            if name != "epoch":
                self.live.log_metric(name, value)
        self.live.next_step()

    def on_train_start(self, trainer, start_epoch, history):
        from dvclive import Live

        # dvcyaml=False: dvc.yaml declares these metrics and plots; save_dvc_exp=False: experiments
        # are made by `dvc exp run`, not as a side effect of training.
        self.live = Live(self.directory, resume=False, save_dvc_exp=False, dvcyaml=False)
        for metrics in history:
            self._log(metrics)

    def on_epoch_end(self, trainer, epoch, metrics):
        self._log(metrics)

    def on_train_end(self, trainer, history):
        if self.live is not None:
            self.live.end()


def progress_bar(description: str, console: Console | None = None):
    """``progress(iterable)`` for ``ffl.metrics.evaluate``: a Rich bar, silent when not a terminal."""
    from rich.progress import track

    console = console or Console(stderr=True)

    def wrap(iterable):
        return track(iterable, description=description, console=console, disable=not console.is_terminal)

    return wrap


class ProgressCallback(Callback):
    """A progress bar over the epoch's steps with the last epoch's numbers; silent when not a terminal."""

    def __init__(self, console: Console | None = None, watch: tuple[str, ...] = ("train/loss/total",)):
        self.console = console or Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.watch = watch
        self.progress = None

    def on_train_start(self, trainer, start_epoch, history):
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.epochs = self.progress.add_task("epochs", total=trainer.config.epochs, completed=start_epoch, info="")
        self.steps = self.progress.add_task("steps", total=len(trainer.train_loader), info="")

    def on_epoch_start(self, trainer, epoch):
        if self.progress:
            self.progress.reset(self.steps, total=len(trainer.train_loader))

    def on_step(self, trainer, epoch, step):
        if self.progress:
            self.progress.advance(self.steps)

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.progress:
            val = {k.removeprefix("val/acc/"): v for k, v in metrics.items() if k.startswith("val/acc/")}
            info = "  ".join(f"{k} {v:.1f}%" for k, v in val.items())
            self.progress.update(self.epochs, advance=1, info=f"loss {metrics['train/loss/total']:.3f}  {info}")

    def on_train_end(self, trainer, history):
        if self.progress:
            self.progress.stop()
