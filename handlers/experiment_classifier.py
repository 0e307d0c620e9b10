"""The entry of an experiment archive (modeltools/experiment_archive.py): the same handler, whose
request core finds the experiment in the archive's settings (handlers/core/experiment.py).
Kept as a name of its own so archives built before stay loadable."""

from __future__ import annotations

from handlers.image_classifier import ImageClassifier


class ExperimentClassifier(ImageClassifier):
    pass
