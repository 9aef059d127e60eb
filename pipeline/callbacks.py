"""Engine callbacks that belong to the orchestration layer: DVCLive curves and a Rich progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ffl.callbacks import Callback
from ffl.errors import one_line
from pipeline.errors import UserError

# The charts dvc.yaml declares (top-level `plots`), each one file of DVCLive custom datapoints drawn
# with the `series` template (.dvc/plots/series.json): one line per classifier or loss term, so a
# person reads them at a glance and `dvc plots diff` sets experiments side by side.
CHARTS = ("top1_err", "loss", "lr")  # every classifier (train and validation), every loss term, lr


def chart_points(history: list[dict]) -> dict[str, list[dict]]:
    """``{chart: [{"epoch": 1-based, "series": name, "split": train|val, "value": v}, ...]}``."""
    charts: dict[str, list[dict]] = {name: [] for name in CHARTS}
    for metrics in history:
        epoch = metrics["epoch"] + 1
        for key, value in metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[1] == "top1_err":
                charts["top1_err"].append({"epoch": epoch, "series": parts[2], "split": parts[0], "value": value})
            elif key.startswith("train/loss/"):
                charts["loss"].append({"epoch": epoch, "series": parts[2], "split": "train", "value": value})
            elif key == "lr":
                charts["lr"].append({"epoch": epoch, "series": "lr", "split": "train", "value": value})
    return charts


class DVCLiveCallback(Callback):
    """One DVCLive step per epoch, and the charts of CHARTS. On resume the curves are rewritten from
    the checkpoint's history, so epochs logged after the last checkpoint are not duplicated and none
    before it are lost."""

    def __init__(self, directory: str | Path):
        self.directory = str(directory)
        self.live = None
        self.points: dict[str, list[dict]] = {}

    def _log(self, metrics: dict) -> None:
        for name, value in metrics.items():
            # Wall-clock time differs on every run: in the metrics file it would change dvc.lock
            # and show as a difference in every `dvc metrics diff`. The log lines carry it.
            if name != "epoch" and not name.startswith("time/"):
                self.live.log_metric(name, value)
        for name, points in chart_points([metrics]).items():
            self.points.setdefault(name, []).extend(points)  # DVCLive rewrites the whole file each time
            self.live.log_plot(name, self.points[name], x="epoch", y="value", template="series")
        self.live.next_step()

    def on_train_start(self, trainer, start_epoch, history):
        from scmrepo.exceptions import SCMError

        from dvclive import Live

        # dvcyaml=False: dvc.yaml declares these metrics and plots; save_dvc_exp=False: experiments
        # are made by `dvc exp run`, not as a side effect of training.
        try:
            self.live = Live(self.directory, resume=False, save_dvc_exp=False, dvcyaml=False)
        except SCMError as e:  # DVCLive reads the git repository around it: one with no commit fails
            raise UserError(
                f"DVCLive cannot read the git repository here ({one_line(e)}); "
                "commit once (`git add -A && git commit -m baseline`) and run it again"
            ) from None
        self.points = {}
        for metrics in history:
            self._log(metrics)

    def on_epoch_end(self, trainer, epoch, metrics):
        self._log(metrics)

    def on_train_end(self, trainer, history):
        if self.live is not None:
            self.live.end()


def write_curves(history: list[dict], directory: str | Path) -> None:
    """The curves of a finished run from its epochs' metrics, as DVCLiveCallback writes them during
    training (a run trained together with others: ffl.stacked)."""
    callback = DVCLiveCallback(directory)
    callback.on_train_start(None, 0, history)
    callback.on_train_end(None, history)


def progress_bar(description: str, console: Console | None = None):
    """``progress(iterable)`` for ``ffl.metrics.evaluate``: a Rich bar, silent when not a terminal."""
    from rich.progress import track

    console = console or Console(stderr=True)

    def wrap(iterable):
        return track(iterable, description=description, console=console, disable=not console.is_terminal)

    return wrap


def epoch_line(epoch: int, epochs: int, metrics: dict) -> str:
    """``epoch 3/20  loss 1.234  val top-1 err sub0 30.1% ... fused 28.0%  lr 0.1  5.6 s``."""
    val = {k.removeprefix("val/top1_err/"): v for k, v in metrics.items() if k.startswith("val/top1_err/")}
    parts = [f"epoch {epoch + 1}/{epochs}", f"loss {metrics['train/loss/total']:.4f}"]
    if val:
        parts.append("val top-1 err " + " ".join(f"{k} {v:.2f}%" for k, v in val.items()))
    parts.append(f"lr {metrics['lr']:.4g}")
    if "time/epoch_s" in metrics:
        parts.append(f"{metrics['time/epoch_s']:.1f} s")
    return "  ".join(parts)


class ProgressCallback(Callback):
    """A progress bar over the epoch's steps on a terminal; one plain line per epoch elsewhere
    (batch jobs, `dvc queue logs`, cluster logs), where a bar would be noise or nothing at all."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar = self.console.is_terminal
        self.progress = None

    def on_train_start(self, trainer, start_epoch, history):
        if not self.bar:
            if start_epoch:
                self._print(f"resumed at epoch {start_epoch + 1}/{trainer.config.epochs}")
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

    def _print(self, line: str) -> None:
        # Not through Rich: off a terminal it wraps lines at 80 columns.
        print(line, file=self.console.file, flush=True)

    def on_epoch_start(self, trainer, epoch):
        if self.progress:
            self.progress.reset(self.steps, total=len(trainer.train_loader))

    def on_step(self, trainer, epoch, step):
        if self.progress:
            self.progress.advance(self.steps)

    def on_epoch_end(self, trainer, epoch, metrics):
        line = epoch_line(epoch, trainer.config.epochs, metrics)
        if self.progress:
            self.progress.update(self.epochs, advance=1, info=line.split("  ", 1)[1])
        else:
            self._print(line)

    def on_train_end(self, trainer, history):
        if self.progress:
            self.progress.stop()
