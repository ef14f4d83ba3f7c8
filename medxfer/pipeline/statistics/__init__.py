"""Patient-clustered statistics that keep their error rates on small test sets.

Owns the intervals and tests (``intervals``), the family of subgroup comparisons with Holm's
procedure (``comparisons``), the patient bootstrap (``bootstrap``) and fast metrics for the
resamples (``scoring``). Pure numpy/scipy on arrays of labels, scores and patient ids; imports
nothing else from ``medxfer.pipeline``.
"""
