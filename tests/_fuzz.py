"""The budget of the property-based tests: small in the suite, large in the campaign.

``OUTPOST_FUZZ_EXAMPLES`` (set by ``bench/fuzz_campaign.py``) multiplies every property test's
number of examples; docs/reliability.md has the campaign's figures.
"""

from __future__ import annotations

import os


def budget(examples: int) -> int:
    """Examples for one property test: ``examples`` in the suite, times the campaign's factor."""
    return examples * max(1, int(os.environ.get("OUTPOST_FUZZ_FACTOR", "1")))
