"""Conditions of a conditional VAE: the spec a run saves, reading what a user gives, and the
metrics that say how well a model follows its condition."""

from vaelab.conditions.metrics import (
    GMM_DATASETS,
    LabelClassifier,
    conditional_metrics,
    conditioning_accuracy,
    label_classifier,
    radius_tracking,
)
from vaelab.conditions.spec import (
    KINDS,
    RANGE_MARGIN,
    Condition,
    ConditionError,
    ConditionRangeWarning,
    fit_condition,
    parse_kind,
    read_condition_file,
)

__all__ = [
    "GMM_DATASETS", "KINDS", "RANGE_MARGIN", "Condition", "ConditionError", "ConditionRangeWarning",
    "LabelClassifier", "conditional_metrics", "conditioning_accuracy", "fit_condition", "label_classifier",
    "parse_kind", "radius_tracking", "read_condition_file",
]
