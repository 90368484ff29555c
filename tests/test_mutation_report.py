"""scripts/mutation's score table, from what `mutmut results --all true` prints and the mutated
sources mutmut leaves in mutants/."""

from __future__ import annotations

from pathlib import Path

import pytest

from outpost_iot.dev.mutation_report import (
    EQUIVALENTS,
    Equivalent,
    analyse,
    change,
    load_equivalents,
    readable,
    report,
)

RESULTS = """\
    outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_1: survived
    outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_2: killed
    outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_3: timeout
    outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_4: survived
    outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_5: survived
    outpost_iot.agent._buffer.x__drop_oldest__mutmut_7: killed
    outpost_iot.agent._buffer.x__drop_oldest__mutmut_8: no tests
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
    (tmp_path / "outpost_iot" / "mqtt").mkdir(parents=True)
    (tmp_path / "outpost_iot" / "mqtt" / "_backoff.py").write_text(MUTANTS, encoding="utf-8")
    lines = report(RESULTS.splitlines(), root=tmp_path).splitlines()
    # 5 mutants: 2 killed (a timeout counts), 1 changing logic survived, 2 only what is logged.
    assert (
        "| `outpost_iot.mqtt._backoff` | 5 | 2 | 1 | 0 | 0 | 2 | 0 | 66 % |" in lines
    )  # rounded down
    assert "| `outpost_iot.agent._buffer` | 2 | 1 | 0 | 0 | 0 | 0 | 1 | 100 % |" in lines
    assert "| **all** | 7 | 3 | 1 | 0 | 0 | 2 | 1 | 75 % |" in lines
    listed = [line for line in lines if line.startswith("- ")]
    assert listed == ["- outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_4"]


def test_a_survivor_whose_source_is_missing_counts_as_logic(tmp_path: Path) -> None:
    lines = report(["    a.b.x_f__mutmut_1: survived"], root=tmp_path).splitlines()
    assert "| `a.b` | 1 | 0 | 1 | 0 | 0 | 0 | 0 | 0 % |" in lines


def _mutants(tmp_path: Path) -> Path:
    (tmp_path / "outpost_iot" / "mqtt").mkdir(parents=True)
    (tmp_path / "outpost_iot" / "mqtt" / "_backoff.py").write_text(MUTANTS, encoding="utf-8")
    return tmp_path


def test_a_change_is_the_lines_it_removes_and_adds(tmp_path: Path) -> None:
    root = _mutants(tmp_path)
    name = "outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_4"
    assert change(name, root) == (
        "- return min(self._cap, self._base * 2)\n+ return min(self._cap, self._base * 3)"
    )
    assert change("outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_99", root) == ""
    assert (
        readable("outpost_iot.mqtt._backoff.xǁBackoffǁceiling")
        == "outpost_iot.mqtt._backoff.Backoff.ceiling"
    )
    assert (
        readable("outpost_iot.agent._buffer.x__drop_oldest")
        == "outpost_iot.agent._buffer._drop_oldest"
    )


def test_a_survivor_listed_as_equivalent_is_counted_apart_and_a_stale_entry_is_named(
    tmp_path: Path,
) -> None:
    root = _mutants(tmp_path)
    listed = Equivalent(
        "outpost_iot.mqtt._backoff.Backoff.ceiling",
        # Written as a person would (indented, with blank lines): matched all the same.
        """
          - return min(self._cap, self._base * 2)

          + return min(self._cap, self._base * 3)
        """,
        "the cap is reached either way",
    )
    stale = Equivalent("outpost_iot.mqtt._backoff.Backoff.ceiling", "- gone\n+ away", "old")
    result = analyse(RESULTS.splitlines(), root, [listed, stale])
    lines = result.table.splitlines()
    # The one logic survivor is now equivalent: nothing the tests miss, so 100 %.
    assert "| `outpost_iot.mqtt._backoff` | 5 | 2 | 0 | 0 | 1 | 2 | 0 | 100 % |" in lines
    assert result.unexplained == []
    assert result.stale == [stale]
    assert "- outpost_iot.mqtt._backoff.Backoff.ceiling: - gone" in str(result).splitlines()
    # Accepted (a real change left alone on purpose) still counts against the score.
    accepted = Equivalent(listed.function, listed.change, "a wait's length", "accepted")
    lines = analyse(RESULTS.splitlines(), root, [accepted]).table.splitlines()
    assert "| `outpost_iot.mqtt._backoff` | 5 | 2 | 0 | 1 | 0 | 2 | 0 | 66 % |" in lines
    # Another change in the same function is not covered by the entry.
    other = Equivalent("outpost_iot.mqtt._backoff.Backoff.ceiling", "- return x\n+ return y", "no")
    assert analyse(RESULTS.splitlines(), root, [other]).unexplained == [
        "outpost_iot.mqtt._backoff.xǁBackoffǁceiling__mutmut_4"
    ]


def test_the_equivalents_file_loads_and_every_entry_says_why(tmp_path: Path) -> None:
    entries = load_equivalents(EQUIVALENTS)
    assert entries, "docs/mutation-equivalents.toml lists the equivalent survivors"
    assert all(e.why.strip() and e.change.strip() for e in entries)
    assert {e.kind for e in entries} <= {"equivalent", "accepted"}
    bad = tmp_path / "eq.toml"
    cases = {
        '[[equivalent]]\n[[equivalent.mutant]]\nfunction = "a.b"\nchange = "- x"\n': "#1 lacks why",
        '[[equivalent]]\nwhy = "w"\n': "#1 lists no mutant",
        '[[equivalent]]\nwhy = "w"\n[[equivalent.mutant]]\nfunction = "a.b"\n': "#1, mutant #1 lacks change",
        '[[equivalent]]\nwhy = "w"\nkind = "maybe"\n': "kind is equivalent or accepted",
    }
    for text, words in cases.items():
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=words):
            load_equivalents(bad)


def test_the_stamp_changes_with_the_modules_the_tests_and_the_settings(tmp_path: Path) -> None:
    """scripts/mutation starts clean when any of them changed (mutmut would keep old results)."""
    from outpost_iot.dev.mutation_report import stamp

    (tmp_path / "m").mkdir()
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "a.py").write_text("x = 1\n")
    (tmp_path / "tests" / "sub" / "test_a.py").write_text("def test(): pass\n")
    (tmp_path / "tests" / "conftest.py").write_text("\n")
    settings = '[tool.mutmut]\nonly_mutate = ["m/a.py"]\npytest_add_cli_args_test_selection = ["tests/sub/"]\n'
    (tmp_path / "pyproject.toml").write_text(settings)
    first = stamp(tmp_path)
    assert stamp(tmp_path) == first
    for path, text in (
        ("m/a.py", "x = 2\n"),
        ("tests/sub/test_a.py", "def test(): assert 1\n"),
        ("tests/conftest.py", "# helpers\n"),
        ("pyproject.toml", settings + 'also_copy = ["b/"]\n'),
    ):
        before = stamp(tmp_path)
        (tmp_path / path).write_text(text)
        assert stamp(tmp_path) != before, path
