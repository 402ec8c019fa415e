"""The metrics speed benchmark's timing helpers and report (tiny sizes; speed itself is not tested)."""

import pytest

from mspider_jax.metrics import benchmark


def test_paired_times_alternates_the_order_each_round():
    calls = []
    first_times, second_times = benchmark.paired_times(lambda: calls.append("zoo"), lambda: calls.append("loop"), 4)
    assert calls == ["zoo", "loop", "loop", "zoo", "zoo", "loop", "loop", "zoo"]
    assert len(first_times) == len(second_times) == 4
    assert all(t >= 0 for t in first_times + second_times)


def test_paired_times_attributes_each_time_to_its_callable():
    import time

    slow_first, fast_second = benchmark.paired_times(lambda: time.sleep(0.02), lambda: None, 3)
    assert min(slow_first) >= 0.02 > max(fast_second)


def test_paired_times_needs_a_round():
    with pytest.raises(ValueError, match="rounds"):
        benchmark.paired_times(lambda: None, lambda: None, 0)


def test_report_has_the_zoo_table_with_per_round_ratios(monkeypatch):
    monkeypatch.setitem(benchmark.SIZES, "tiny", (120, 16, 3, 5))
    lines = []
    report = benchmark.run(sizes=("tiny",), metrics=("hscore", "leep"), repeats=1, zoo_size=2,
                           zoo_metrics=("hscore",), zoo_rounds=2, log=lines.append)
    assert report.splitlines() == lines
    assert any(line.startswith("| hscore |") and "error" not in line for line in lines[:12])
    (zoo_row,) = [line for line in lines if line.startswith("| hscore |") and line.count("x") >= 3]
    cells = [c.strip() for c in zoo_row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0
    ratio = float(cells[3].rstrip("x"))
    low, high = (float(x) for x in cells[4].rstrip("x").split("x-"))
    # With 2 rounds the medians are means, and a ratio of sums lies between the per-round ratios.
    assert low - 0.01 <= ratio <= high + 0.01
    assert "Medians of 2 rounds" in report


def test_run_rejects_zero_zoo_rounds():
    with pytest.raises(ValueError, match="zoo_rounds"):
        benchmark.run(sizes=("small",), metrics=("hscore",), zoo_rounds=0, log=lambda line: None)


def test_report_times_the_unavoidable_steps_of_otce_and_ncti(monkeypatch):
    # N and D must reach NCTI's 64 PCA dimensions; the line names both steps with their shapes.
    monkeypatch.setitem(benchmark.SIZES, "tiny", (200, 80, 3, 5))
    lines = []
    benchmark.run(sizes=("tiny",), metrics=("otce", "ncti"), repeats=1, zoo_size=0, log=lines.append)
    (line,) = [line for line in lines if line.startswith("Unavoidable steps")]
    assert "OTCE's cost-matrix product 25 x 80 x 200" in line  # Ns = min(5·Cs, 2000) source rows
    assert "NCTI's randomized PCA to 64 dimensions" in line
    assert "target at the medium size 0.1 s" in line and "target at the medium size 0.15 s" in line
    seconds = [float(part.split(" s (target")[0].rsplit(" ", 1)[1]) for part in line.split("; ")]
    assert all(s > 0 for s in seconds)


def test_report_has_no_unavoidable_step_line_without_otce_or_ncti(monkeypatch):
    monkeypatch.setitem(benchmark.SIZES, "tiny", (120, 16, 3, 5))
    lines = []
    benchmark.run(sizes=("tiny",), metrics=("hscore",), repeats=1, zoo_size=0, log=lines.append)
    assert not any(line.startswith("Unavoidable steps") for line in lines)
