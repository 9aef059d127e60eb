"""Hooks the engine calls; loggers, progress bars and tuners implement the ones they need."""

from __future__ import annotations


class Callback:
    def on_train_start(self, trainer, start_epoch: int, history: list[dict]) -> None:
        """``history`` holds the metrics of epochs finished before a resume (empty on a fresh run)."""

    def on_epoch_start(self, trainer, epoch: int) -> None:
        pass

    def on_step(self, trainer, epoch: int, step: int) -> None:
        pass

    def on_epoch_end(self, trainer, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer, history: list[dict]) -> None:
        pass


class PrintEpochs(Callback):
    """One line per finished epoch (a library user's progress; the CLI draws a Rich bar instead):
    the epoch, its mean training loss, every classifier's validation error, the seconds it took."""

    def __init__(self, write=print):
        self.write = write

    def on_epoch_end(self, trainer, epoch, metrics):
        errors = ", ".join(
            f"{k.rsplit('/', 1)[-1]} {v:.2f}%" for k, v in metrics.items() if k.startswith("val/top1_err/")
        )
        total = trainer.config.epochs
        loss = metrics.get("train/loss/total", float("nan"))
        took = metrics.get("time/epoch_s", 0.0)
        self.write(f"epoch {epoch + 1}/{total}: loss {loss:.3f}; validation error {errors or '-'} ({took:.0f} s)")
