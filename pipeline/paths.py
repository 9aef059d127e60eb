"""Where the stages read and write; dvc.yaml declares the same paths."""

from pathlib import Path

PREPARED = Path("data/prepared")
MODEL = Path("models/model.pt")
EXPORT = Path("models/export")  # standalone files of the trained classifiers (ffl export)
CHECKPOINTS = Path("checkpoints")
CHECKPOINT = CHECKPOINTS / "last.pt"
LOCK = CHECKPOINTS / ".lock"
DVCLIVE = Path("dvclive")
# The curves of the run in progress; they replace DVCLIVE when it finishes, with the model, so a
# failed run never leaves the last model beside another run's curves.
LIVE = CHECKPOINTS / "dvclive"
TEST_METRICS = Path("metrics/test.json")
CONFUSION = Path("plots/confusion.json")
CAM = Path("plots/cam.png")
