"""Autobahn|Testsuite sections 1-7 (the fast subset; `make conformance` runs them all)."""

from __future__ import annotations

from tools import conformance


def test_autobahn_sections_1_to_7_have_no_failures(tmp_path):
    result = conformance.run(conformance.FAST, tmp_path / "autobahn")
    print(conformance.table(result))
    assert conformance.failed_cases(tmp_path / "autobahn") == []
    # Every case of every section ran and got a verdict.
    assert set(result) == set(conformance.FAST)
    assert sum(sum(c.values()) for c in result.values()) >= 240
    assert all(c["OK"] > 0 for c in result.values())
