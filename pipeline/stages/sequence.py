"""dvc.yaml's stages in its order, run in this process as `dvc repro` runs them: the pipeline's entry
for ``ffl reproduce``, whose runs each go through them in a scratch directory. A test holds the
order to dvc.yaml's."""

from __future__ import annotations

from pipeline.params import Params
from pipeline.stages.deploy import export
from pipeline.stages.evaluate import evaluate
from pipeline.stages.prepare import prepare
from pipeline.stages.train import train

STAGES = {
    "prepare": prepare,
    "train": lambda params: train(params, progress=False),
    "evaluate": evaluate,
    "export": lambda params: export(),  # the stage's defaults: every classifier, both formats
}


def run_stages(params: Params, first: str = "prepare", last: str = "export") -> None:
    """The stages from ``first`` to ``last``, in the working directory, on these params."""
    names = list(STAGES)
    for name in names[names.index(first) : names.index(last) + 1]:
        STAGES[name](params)
