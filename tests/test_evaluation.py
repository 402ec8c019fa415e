"""Tests of mspider_jax.evaluation: measures, priors, aggregation, tables, published anchors.

Expected values are hand-computed from the definitions (fractions in the comments), computed by an
independent pure-Python double sum, or taken from the published numbers (spec model_spider.md §8).
"""

import csv
import itertools
import math

import numpy as np
import pytest
import scipy.stats

from mspider_jax import cli
from mspider_jax import evaluation as ev
from mspider_jax.evaluation import published as pub
from mspider_jax.evaluation import reproduce


def reference_weighted_tau(x, y):
    """Vigna's additive hyperbolic weighted tau, rank=None, as a plain double sum over pairs."""
    x, y = [float(v) for v in x], [float(v) for v in y]
    n = len(x)
    order = sorted(range(n), key=lambda i: (x[i], y[i]), reverse=True)
    rank = {item: position for position, item in enumerate(order)}
    numerator = norm_x = norm_y = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            weight = 1 / (rank[i] + 1) + 1 / (rank[j] + 1)
            sign_x = (x[i] > x[j]) - (x[i] < x[j])
            sign_y = (y[i] > y[j]) - (y[i] < y[j])
            numerator += weight * sign_x * sign_y
            norm_x += weight * (sign_x != 0)
            norm_y += weight * (sign_y != 0)
    return numerator / math.sqrt(norm_x * norm_y)


# ---------------------------------------------------------------------------------------------
# Weighted tau.


def test_weighted_tau_three_items_by_hand():
    # Importance ranks follow the truth: h = 1, 1/2, 1/3. Pairs (w, sign): (0,1) 3/2 -, (0,2) 4/3 -,
    # (1,2) 5/6 +. Numerator -2, both norms 11/3 -> -6/11.
    assert ev.weighted_tau([3, 2, 1], [1, 3, 2]) == pytest.approx(-6 / 11, abs=1e-12)
    # Swapped arguments weigh by the other ranking: -2/3 / (11/3) = -2/11. Truth must come first.
    assert ev.weighted_tau([1, 3, 2], [3, 2, 1]) == pytest.approx(-2 / 11, abs=1e-12)


def test_weighted_tau_with_truth_ties_by_hand():
    # truth ties models 0 and 1; importance by (truth, score) desc: 1, 0, 2, 3,
    # so h = 1/2, 1, 1/3, 1/4 for models 0..3.
    # Numerator -25/12; x-norm 57/12 (the tied pair, weight 3/2, is left out); y-norm 75/12.
    truth, scores = [2, 2, 1, 0], [0.1, 0.3, 0.2, 0.4]
    assert ev.weighted_tau(truth, scores) == pytest.approx(-25 / math.sqrt(57 * 75), abs=1e-12)
    # Ranks form, tie broken in favour of model 0: x = (3, 2, 1, 0), y ranks = (0, 2, 1, 3).
    # Numerator -55/12, both norms 75/12 -> -11/15.
    value = ev.weighted_tau(truth, scores, form="ranks", tie_break=[1, 0, 0, 0])
    assert value == pytest.approx(-11 / 15, abs=1e-12)


def test_weighted_tau_matches_scipy_and_definition_on_random_inputs(rng):
    for _ in range(200):
        size = int(rng.integers(2, 13))
        truth = rng.integers(0, 4, size).astype(float)   # many ties on purpose
        scores = rng.normal(size=size).round(1)
        if np.unique(truth).size < 2 or np.unique(scores).size < 2:
            continue
        expected = scipy.stats.weightedtau(truth, scores, rank=None).statistic
        assert ev.weighted_tau(truth, scores) == pytest.approx(expected, abs=1e-12)
        assert ev.weighted_tau(truth, scores) == pytest.approx(
            reference_weighted_tau(list(truth), list(scores)), abs=1e-12)


def test_weighted_tau_batch_matches_scipy(rng):
    for _ in range(40):
        size = int(rng.integers(2, 11))
        truth = rng.integers(0, 3, size).astype(float)
        batch = rng.integers(0, 4, (6, size)).astype(float)
        if np.unique(truth).size < 2 or any(np.unique(row).size < 2 for row in batch):
            continue
        expected = [scipy.stats.weightedtau(truth, row, rank=None).statistic for row in batch]
        np.testing.assert_allclose(ev.weighted_tau_batch(truth, batch), expected, atol=1e-12)


def test_ranks_form_uses_tie_broken_permutation(rng):
    for _ in range(50):
        truth = rng.integers(0, 4, 8).astype(float)
        tie_break = rng.permutation(8).astype(float)
        scores = rng.normal(size=8)
        if np.unique(truth).size < 2:
            continue
        order = sorted(range(8), key=lambda i: (truth[i], tie_break[i]))
        truth_ranks = [order.index(i) for i in range(8)]
        score_order = sorted(range(8), key=lambda i: scores[i])
        score_ranks = [score_order.index(i) for i in range(8)]
        expected = reference_weighted_tau(truth_ranks, score_ranks)
        assert ev.weighted_tau(truth, scores, form="ranks", tie_break=tie_break) == pytest.approx(
            expected, abs=1e-12)


def test_integer_ranks_by_hand():
    np.testing.assert_array_equal(ev.integer_ranks([3, 1, 3, 2]), [2, 0, 2, 1])
    np.testing.assert_array_equal(ev.integer_ranks([3, 1, 3, 2], tie_break=[0, 0, 1, 0]),
                                  [2, 0, 3, 1])


@pytest.mark.parametrize("truth,scores,match", [
    ([1.0, np.nan, 2.0], [1, 2, 3], "not finite at index 1"),
    ([1, 2, 3], [1, np.inf, 3], "scores is not finite"),
    ([1, 1, 1], [1, 2, 3], "truth is constant"),
    ([1, 2, 3], [5, 5, 5], "scores are constant"),
    ([1], [1], "at least 2 models"),
    ([1, 2], [1, 2, 3], "differ in length"),
])
def test_weighted_tau_rejects_bad_input(truth, scores, match):
    with pytest.raises(ValueError, match=match):
        ev.weighted_tau(truth, scores)


def test_unknown_form_and_misplaced_tie_break_are_errors():
    with pytest.raises(ValueError, match="unknown form"):
        ev.weighted_tau([1, 2], [1, 2], form="rank")
    with pytest.raises(ValueError, match="only used with form"):
        ev.weighted_tau([1, 2], [1, 2], tie_break=[0, 1])


# ---------------------------------------------------------------------------------------------
# Other measures.


def test_kendall_spearman_pearson_by_hand():
    truth, scores = [1, 2, 2, 3], [1, 3, 2, 4]
    # 5 concordant, 0 discordant pairs of 6; one pair tied in truth: tau_b = 5 / sqrt(5 * 6).
    assert ev.kendall_tau(truth, scores) == pytest.approx(5 / math.sqrt(30), abs=1e-12)
    # Average ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5).
    assert ev.spearman_rho(truth, scores) == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    # Centred (-1, 0, 1) and (-1, 1, 0): 1 / sqrt(2 * 2).
    assert ev.pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5, abs=1e-12)
    # Ranks form: Pearson of the ranks, (0, 1, 2, 3) vs (0, 3, 1, 2) with the tie broken for model 1
    # -> centred (-1.5, -.5, .5, 1.5) . (-1.5, 1.5, -.5, .5) = 2.25 - .75 - .25 + .75 = 2 over 5.
    assert ev.pearson_r(truth, [1, 4, 2, 3], form="ranks", tie_break=[0, 0, 1, 0]) == pytest.approx(
        0.4, abs=1e-12)


def test_top_k_hit_by_hand():
    truth = [5, 9, 9, 1]                      # models 1 and 2 tie for the best
    assert ev.top_k_hit(truth, [4, 3, 0, 4], 1) == 0.0
    assert ev.top_k_hit(truth, [4, 3, 0, 4], 2) == 0.0
    assert ev.top_k_hit(truth, [4, 3, 0, 4], 3) == 1.0
    assert ev.top_k_hit(truth, [0, 1, 5, 2], 1) == 1.0   # the second best-tied model counts
    assert ev.top_k_hit(truth, [0, 1, 5, 2], 9) == 1.0
    # All scores tie: one (two) of three slots drawn at random -> 1/3 (2/3).
    assert ev.top_k_hit([9, 1, 2], [5, 5, 5], 1) == pytest.approx(1 / 3)
    assert ev.top_k_hit([9, 1, 2], [5, 5, 5], 2) == pytest.approx(2 / 3)
    # Boundary tie: model 3 sure in, one slot for the tied {0, 1, 2} of which 2 is best -> 1/3.
    assert ev.top_k_hit([1, 2, 9, 5], [3, 3, 3, 8], 2) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="positive integer"):
        ev.top_k_hit([1, 2], [1, 2], 0)


def test_regret_by_hand():
    assert ev.regret([80, 90, 85], [0.2, 0.1, 0.3]) == pytest.approx(5.0)
    assert ev.regret([80, 90, 85], [0.3, 0.1, 0.3]) == pytest.approx(7.5)  # mean of 10 and 5
    assert ev.regret([80, 90, 85], [0, 1, 0]) == 0.0


def test_evaluate_task_drops_missing_truth_and_masked_models():
    result = ev.evaluate_task([np.nan, 3, 2, 1], [100, 1, 3, 2])
    assert set(result) == set(ev.MEASURES)
    assert result["weighted_tau"] == pytest.approx(-6 / 11, abs=1e-12)
    assert result["top1_hit"] == 0.0 and result["top3_hit"] == 1.0
    assert result["regret"] == pytest.approx(1.0)        # picked truth 2 instead of 3
    keep = np.array([False, True, True, True])
    masked = ev.evaluate_task([9, 3, 2, 1], [100, 1, 3, 2], mask=keep)
    assert masked == result


def test_evaluate_task_errors_name_the_model():
    with pytest.raises(ValueError, match="resnet50"):
        ev.evaluate_task([1, 2, 3], [1, np.nan, 2], names=["googlenet", "resnet50", "densenet121"])
    with pytest.raises(ValueError, match="at least 2 models"):
        ev.evaluate_task([np.nan, np.nan, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="bool"):
        ev.evaluate_task([1, 2, 3], [1, 2, 3], mask=[1, 0, 1])


# ---------------------------------------------------------------------------------------------
# Aggregation and priors.


def test_aggregate_bootstrap_interval():
    # Two tasks: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4 -> 95% CI [0, 1].
    two = ev.aggregate([0.0, 1.0])
    assert (two.mean, two.low, two.high, two.n) == (0.5, 0.0, 1.0, 2)
    assert ev.aggregate([0.3]) == ev.Summary(0.3, 0.3, 0.3, 1)
    rng = np.random.default_rng(1)
    few, many = rng.normal(size=8), rng.normal(size=400)
    small, large = ev.aggregate(few), ev.aggregate(many)
    assert small.low <= small.mean <= small.high and large.low <= large.mean <= large.high
    assert large.high - large.low < 0.5 * (small.high - small.low)   # ~ 1/sqrt(n)
    assert ev.aggregate(few, seed=3) == ev.aggregate(few, seed=3)
    for bad in ([], [1.0, np.nan]):
        with pytest.raises(ValueError):
            ev.aggregate(bad)


def test_constant_prior_by_hand():
    train = [[3, 2, 1], [1, 2, 3], [3, 1, 2]]
    # normalised ranks (1 = best): (1, .5, 0), (0, .5, 1), (1, 0, .5)
    np.testing.assert_allclose(ev.constant_prior(train), [2 / 3, 1 / 3, 0.5])
    # missing entry: task 0 ranks its 3 known models (1, -, 0, .5); task 1 gives (0, 1/3, 2/3, 1)
    np.testing.assert_allclose(ev.constant_prior([[3, np.nan, 1, 2], [1, 2, 3, 4]]),
                               [0.5, 1 / 3, 1 / 3, 0.75])
    with pytest.raises(ValueError, match="model 1 has no ground truth"):
        ev.constant_prior([[1, np.nan, 2]])
    with pytest.raises(ValueError, match="training task 0 has 1"):
        ev.constant_prior([[1, np.nan, np.nan], [1, 2, 3]])


def test_random_expected_matches_enumeration():
    truth = np.array([3.0, 3.0, 1.0, 2.0, 0.0])        # a tie for the best
    permutations = [np.array(p, dtype=float) for p in itertools.permutations(range(5))]
    results = [ev.evaluate_task(truth, p) for p in permutations]
    enumerated = {m: np.mean([r[m] for r in results]) for m in ev.MEASURES}
    expected = ev.random_expected(truth)
    assert expected["top1_hit"] == pytest.approx(2 / 5) == pytest.approx(enumerated["top1_hit"])
    assert expected["top3_hit"] == pytest.approx(enumerated["top3_hit"])
    assert expected["regret"] == pytest.approx(enumerated["regret"])
    for name in ("kendall_tau", "spearman_rho", "pearson_r"):
        assert expected[name] == 0.0 and abs(enumerated[name]) < 1e-12
    # Monte Carlo with 20000 draws: the standard error is below 0.005 here.
    assert expected["weighted_tau"] == pytest.approx(enumerated["weighted_tau"], abs=0.02)
    assert abs(enumerated["weighted_tau"]) > 1e-3           # with ties it really is not 0
    # Without ties (or with a tie-break) the expectation is exactly 0.
    assert ev.random_expected([4.0, 3.0, 1.0, 2.0, 0.0])["weighted_tau"] == 0.0
    assert ev.random_expected(truth, form="ranks", tie_break=[1, 0, 0, 0, 0])["weighted_tau"] == 0.0


# ---------------------------------------------------------------------------------------------
# Tables.


def _records():
    truth = [{"dataset": d, "model": m, "accuracy": a} for d, m, a in [
        ("A", "m1", 80), ("A", "m2", 90), ("A", "m3", 85),
        ("B", "m1", 70), ("B", "m2", 60), ("B", "m3", 75)]]
    scores = [{"dataset": d, "model": m, "good": g, "bad": b} for d, m, g, b in [
        ("A", "m1", 1, 3), ("A", "m2", 3, 1), ("A", "m3", 2, 2),
        ("B", "m1", 2, 2), ("B", "m2", 1, 3), ("B", "m3", 3, 1)]]
    return scores, truth


def test_results_table_values_and_markdown(tmp_path):
    scores, truth = _records()
    table = ev.results_table(scores, truth, reference_priors={"prior": {"m1": 0, "m2": 2, "m3": 1}})
    assert table.rows == (
        "good", "bad", "prior", "constant prior (other datasets)", "random (expected)")
    assert table.datasets == ("A", "B") and table.num_references == 3
    assert table.value("good", "A") == pytest.approx(1.0)
    assert table.value("bad", "B") == pytest.approx(-1.0)
    prior_a = scipy.stats.weightedtau([80, 90, 85], [0, 2, 1], rank=None).statistic
    prior_b = scipy.stats.weightedtau([70, 60, 75], [0, 2, 1], rank=None).statistic
    assert table.value("prior", "Mean") == pytest.approx((prior_a + prior_b) / 2)
    # leave one out: for A the prior is B's order (m3 > m1 > m2), and vice versa
    loo_a = scipy.stats.weightedtau([80, 90, 85], [0.5, 0, 1], rank=None).statistic
    assert table.value("constant prior (other datasets)", "A") == pytest.approx(loo_a)
    assert table.best()[0].all() and not table.best()[1].any()
    markdown = table.to_markdown()
    assert "| good | **1.000** | **1.000** | **1.000** |" in markdown
    assert "*random (expected)*" in markdown
    path = table.to_csv(tmp_path / "t.csv")
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == list(table.rows)
    assert float(rows[1]["B"]) == pytest.approx(-1.0) and rows[2]["kind"] == "reference"
    regret = ev.results_table(scores, truth, measure="regret", loo_prior=False,
                              include_random=False)
    assert regret.value("bad", "A") == pytest.approx(10.0) and regret.best()[0].all()


@pytest.mark.parametrize("edit,match", [
    (lambda s, t: s.pop(4), "dataset 'B', model 'm2': ground truth but no 'good' score"),
    (lambda s, t: t.pop(0), "dataset 'A', model 'm1': 'good' score but no ground truth"),
    (lambda s, t: s.append(dict(s[0])), "duplicate row for dataset 'A', model 'm1'"),
    (lambda s, t: s[2].update(bad=float("nan")), "dataset 'A', model 'm3'.*not finite"),
    (lambda s, t: t[3].update(accuracy=float("nan")), "dataset 'B', model 'm1'.*not finite"),
    (lambda s, t: [t.pop(4), t.pop(4), s.pop(4), s.pop(4)], "dataset 'B' has 1 model"),
    (lambda s, t: [t.pop(3) for _ in range(3)], "dataset 'B' has no ground truth"),
])
def test_results_table_bad_input(edit, match):
    scores, truth = _records()
    edit(scores, truth)
    with pytest.raises(ValueError, match=match):
        ev.results_table(scores, truth)


def test_results_table_unknown_method_and_measure():
    scores, truth = _records()
    with pytest.raises(ValueError, match=r"unknown method column\(s\) \['LogME'\]"):
        ev.results_table(scores, truth, methods=["good", "LogME"])
    with pytest.raises(ValueError, match="unknown measure"):
        ev.results_table(scores, truth, measure="ndcg")


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_csv_readers_name_the_line(tmp_path):
    scores = _write(tmp_path / "s.csv", "Dataset,Model,LogME\nA,m1,1\nA,m2,2\nA,m1,3\n")
    with pytest.raises(ValueError, match=r"s.csv:4: duplicate row for dataset 'A', model 'm1' "
                                         r"\(first at line 2\)"):
        ev.read_scores_csv(scores)
    scores = _write(tmp_path / "s.csv", "dataset,model,LogME\nA,m1,1\nA,m2,nan\n")
    with pytest.raises(ValueError, match=r"s.csv:3 column 'LogME' \(dataset 'A', model 'm2'\)"):
        ev.read_scores_csv(scores)
    truth = _write(tmp_path / "t.csv", "dataset,model,accuracy\nA,m1,x\n")
    with pytest.raises(ValueError, match=r"t.csv:2 .*'x' is not a number"):
        ev.read_truth_csv(truth)


def test_table_command_writes_files(tmp_path, capsys):
    scores = _write(tmp_path / "s.csv", "dataset,model,good,bad\nA,m1,1,3\nA,m2,3,1\nA,m3,2,2\n"
                                        "B,m1,2,2\nB,m2,1,3\nB,m3,3,1\n")
    truth = _write(tmp_path / "t.csv", "dataset,model,accuracy\nA,m1,80\nA,m2,90\nA,m3,85\n"
                                       "B,m1,70\nB,m2,60\nB,m3,75\n")
    prefix = tmp_path / "out" / "table"
    assert cli.main(["table", "--scores", scores, "--truth", truth, "--methods", "bad", "good",
                     "--out", str(prefix)]) == 0
    printed = capsys.readouterr().out
    assert printed.index("| bad |") < printed.index("| good |")
    for suffix in (".md", ".csv", ".png"):
        assert (tmp_path / "out" / f"table{suffix}").stat().st_size > 0
    assert (tmp_path / "out" / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["table", "--scores", scores, "--truth", truth, "--methods", "LogME",
                     "--out", str(prefix)]) == 2
    assert "unknown method column" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Published data and the known answers of spec model_spider.md §8.


def test_published_loaders_shapes():
    accuracy = pub.single_source_accuracy()
    assert accuracy.models == pub.SINGLE_SOURCE_MODELS and accuracy.values.shape == (10, 10)
    assert set(pub.TABLE1_DATASETS + pub.REGRESSION_DATASETS) == set(accuracy.rows)
    assert pub.multi_source_accuracy().values.shape == (7, 42)
    assert pub.multi_source_accuracy(all66=True).values.shape == (7, 66)
    assert pub.training_task_ranks().values.shape == (96, 10)
    assert pub.training_task_ranks("multi_source_42").values.shape == (96, 42)
    assert len(pub.training_task_classes()["c86"]) == 85           # P_h of spec §2.3
    assert set(pub.baseline_scores()) == set(pub.BASELINE_METHODS)
    assert pub.imagenet_top1()["resnet152"] == 78.312


def test_ftrank_is_accuracy_order_with_ties_broken():
    accuracy, ftrank = pub.single_source_accuracy(), pub.single_source_ftrank()
    for dataset in accuracy.rows:
        np.testing.assert_array_equal(ev.integer_ranks(accuracy.row(dataset), ftrank.row(dataset)),
                                      ftrank.row(dataset))


def test_known_answers_raw_convention():
    scores, accuracy = pub.baseline_scores(), pub.single_source_accuracy()

    def tau(method, dataset):
        return ev.weighted_tau(accuracy.row(dataset), scores[method].row(dataset))

    assert tau("H-Score", "Aircraft") == pytest.approx(0.328, abs=5e-4)
    assert tau("NCE", "Cars") == pytest.approx(0.771, abs=5e-4)
    assert np.mean([tau("LogME", d) for d in pub.TABLE1_DATASETS]) == pytest.approx(0.678, abs=5e-4)
    # PACTran as stored reproduces the published (sign-flipped Dirichlet) row.
    assert np.mean([tau("PACTranDirichlet", d) for d in pub.TABLE1_DATASETS]) == pytest.approx(
        0.397, abs=5e-4)
    # A perfect copy of FTRank scores 1 in the code's convention, less under the raw one (§8.2).
    ftrank = pub.single_source_ftrank()
    for dataset, raw in (("Cars", 0.967), ("CIFAR10", 0.986), ("SUN397", 0.991)):
        raw_value = ev.weighted_tau(accuracy.row(dataset), ftrank.row(dataset))
        assert raw_value == pytest.approx(raw, abs=5e-4)
        assert ev.weighted_tau(accuracy.row(dataset), ftrank.row(dataset), form="ranks",
                               tie_break=ftrank.row(dataset)) == pytest.approx(1.0)


def test_constant_prior_anchors_code_convention():
    accuracy, ftrank = pub.single_source_accuracy(), pub.single_source_ftrank()
    constant = reproduce.most_common_training_label()
    np.testing.assert_array_equal(constant, [1, 9, 6, 7, 8, 2, 4, 5, 0, 3])
    c86 = pub.training_task_ranks(tasks=["c86"]).row("c86")
    top1 = [pub.imagenet_top1()[m] for m in pub.SINGLE_SOURCE_MODELS]

    def taus(scores, datasets):
        return [ev.weighted_tau(accuracy.row(d), scores, form="ranks", tie_break=ftrank.row(d))
                for d in datasets]

    datasets = pub.TABLE1_DATASETS + pub.REGRESSION_DATASETS
    np.testing.assert_allclose(taus(constant, datasets), [0.670, 0.743, 0.859, 0.717, 0.734, 0.804,
                                                          0.641, 0.815, 0.594, 0.655], atol=5e-4)
    assert np.mean(taus(constant, pub.TABLE1_DATASETS)) == pytest.approx(0.748, abs=5e-4)
    assert np.mean(taus(c86, pub.TABLE1_DATASETS)) == pytest.approx(0.749, abs=5e-4)
    assert np.mean(taus(top1, pub.TABLE1_DATASETS)) == pytest.approx(0.735, abs=5e-4)


def test_reproduction_differs_only_where_explained(tmp_path):
    table, differences = reproduce.reproduce_single_source(tmp_path / "t", verbose=False)
    cells = {(d.method, d.dataset) for d in differences}
    assert cells == {("LEEP", "Aircraft"), ("LogME", "Aircraft"), ("NLEEP", "Aircraft"),
                     ("LEEP", "Mean"), ("LogME", "Mean"), ("NLEEP", "Mean"), ("GBC", "Mean")}
    assert not any(d.reason == "unexplained" for d in differences)
    assert table.rows[:9] == pub.BASELINE_METHODS
    assert {p.suffix for p in tmp_path.iterdir()} == {".md", ".csv", ".png"}
