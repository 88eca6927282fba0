"""Layer 4, the report: a pure function of the database (torch-free, tested).

==================  ==============================================================
``document``        ``write_report``: the markdown document and its sections
``runs``            ``runs.md``: how the sweep ran (trial numbers, interrupted trials, hours)
``frame``           the database flattened into one DataFrame
``comparison``      the methods × tasks table
``honest``          protocol, equal budget, chance, α: the honest sections
``paired``          the paired tests: focus, distinct comparisons, correction family, power
``statistics``      expected maximum, Holm, paired tests, bootstrap
``seed_stats``      seed confirmations: means and intervals
``reference``       published-score files
``figures``         the figures; ``figures_honest`` those of the honest sections
``render``          byte-stable, cached PNG rendering
==================  ==============================================================
"""

from harness.util.lazy import public_face

__getattr__, __all__ = public_face(__name__, {"write_report": "document"})
