"""The budget of the property-based tests: small in the suite, large in the campaign.

``OUTPOST_FUZZ_FACTOR`` (set by ``bench/fuzz_campaign.py`` and ``scripts/mutation``) scales
every property test's number of examples; docs/reliability.md has the campaign's figures.
"""

from __future__ import annotations

import os


def budget(examples: int) -> int:
    """Examples for one property test: ``examples`` in the suite, times the campaign's factor
    (``OUTPOST_FUZZ_FACTOR``: 40 for a fuzz campaign; 0.1 in mutation runs, where the exact
    tests do most of the killing and each mutant reruns the property tests)."""
    return max(1, round(examples * float(os.environ.get("OUTPOST_FUZZ_FACTOR", "1"))))
