"""Honest comparisons over seeds: mean ± std per arm and paired differences against a baseline.

With 3–5 seeds a p-value is weak evidence; we report it beside the effect size and use a plain,
pre-declared rule for "beats": the mean paired difference exceeds one standard deviation of the
baseline across seeds (DESIGN: no tuning on test; this rule is fixed before any run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medgen.metrics import mean_std


def paired_comparison(arm: Sequence[float], baseline: Sequence[float]) -> dict[str, float | bool]:
    """Paired (same seed) comparison of one metric: arm - baseline.

    Returns mean and std of the differences, a paired t statistic and two-sided p-value (nan when the
    differences have no spread), the baseline's std, and `beats` = mean difference > baseline std.
    """
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired comparison needs two equal-length series of >= 2 seeds, got {a.shape} and {b.shape}")
    diff = a - b
    diff_mean, diff_std = mean_std(diff)
    if diff_std > 0:
        result = stats.ttest_rel(a, b)
        t_stat, p_value = float(result.statistic), float(result.pvalue)
    else:
        t_stat, p_value = math.nan, math.nan
    baseline_std = mean_std(b)[1]
    return {
        "diff_mean": diff_mean,
        "diff_std": diff_std,
        "t": t_stat,
        "p_value": p_value,
        "baseline_std": baseline_std,
        "beats": bool(diff_mean > baseline_std),
    }
