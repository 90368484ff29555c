"""scripts/mutation's score table, from what `mutmut results --all true` prints and the mutated
sources mutmut leaves in mutants/."""

from __future__ import annotations

from pathlib import Path

from outpost_dev.mutation_report import report

RESULTS = """\
    outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_1: survived
    outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_2: killed
    outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_3: timeout
    outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_4: survived
    outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_5: survived
    agent._buffer.x__drop_oldest__mutmut_7: killed
    agent._buffer.x__drop_oldest__mutmut_8: no tests
some line mutmut prints that is not a mutant
"""

MUTANTS = """
class Backoff:
    def xǁBackoffǁceiling__mutmut_orig(self):
        self._log.info("ceiling at %s", self._cap)
        return min(self._cap, self._base * 2)

    def xǁBackoffǁceiling__mutmut_1(self):
        self._log.info("XXceiling at %sXX", self._cap)
        return min(self._cap, self._base * 2)

    def xǁBackoffǁceiling__mutmut_4(self):
        self._log.info("ceiling at %s", self._cap)
        return min(self._cap, self._base * 3)

    def xǁBackoffǁceiling__mutmut_5(self):
        self._log.info("ceiling at %s", None)
        return min(self._cap, self._base * 2)
"""


def test_scores_per_module_set_text_only_survivors_apart(tmp_path: Path) -> None:
    (tmp_path / "outpost_mqtt").mkdir()
    (tmp_path / "outpost_mqtt" / "_backoff.py").write_text(MUTANTS, encoding="utf-8")
    lines = report(RESULTS.splitlines(), root=tmp_path).splitlines()
    # 5 mutants: 2 killed (a timeout counts), 1 changing logic survived, 2 only what is logged.
    assert "| `outpost_mqtt._backoff` | 5 | 2 | 1 | 2 | 0 | 67 % |" in lines
    assert "| `agent._buffer` | 2 | 1 | 0 | 0 | 1 | 100 % |" in lines
    assert "| **all** | 7 | 3 | 1 | 2 | 1 | 75 % |" in lines
    listed = [line for line in lines if line.startswith("- ")]
    assert listed == ["- outpost_mqtt._backoff.xǁBackoffǁceiling__mutmut_4"]


def test_a_survivor_whose_source_is_missing_counts_as_logic(tmp_path: Path) -> None:
    lines = report(["    a.b.x_f__mutmut_1: survived"], root=tmp_path).splitlines()
    assert "| `a.b` | 1 | 0 | 1 | 0 | 0 | 0 % |" in lines
