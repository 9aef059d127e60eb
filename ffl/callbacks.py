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
