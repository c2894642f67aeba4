"""Everything a person looks at: the static report, paper-style figures, the rating kit.

Reads results (explanations, evaluations) and image files; never runs the model.

- :mod:`lavise.report.evidence`: top images with the region where the filter reaches T_u lit.
- :mod:`lavise.report.html`: the static site (index of every filter, one page per filter).
- :mod:`lavise.report.groups_page`: the group-comparison page (``groups.html``, Figure 8).
- :mod:`lavise.report.figures`: matplotlib figures (the paper's Figure 4 rows).
- :mod:`lavise.report.ratings`: the blind rating page, its key, and the summary of ratings.
"""

from __future__ import annotations

from lavise.report.html import build_report, load_evaluation, load_explanations

__all__ = ["build_report", "load_evaluation", "load_explanations"]
