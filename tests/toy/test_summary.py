"""`byg bench combine`: finished bench runs read as one table over training seeds, and only runs that compare."""

import json

import pytest
import torch

from byg_core.cli import main as byg
from byg_core.toy.summary import direction

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Smoke bench runs: ByG at training seeds 0 and 1, the baseline once, and one run at other settings."""
    root = tmp_path_factory.mktemp("runs")
    common = ["bench", "--smoke", "--suite", "ablations", "--device", "cpu"]
    folders = {
        "identity": [*common, "--methods", "identity"],
        "seed0": [*common, "--methods", "byg,no_cycle", "--seed", "0"],
        "seed1": [*common, "--methods", "byg,no_cycle", "--seed", "1"],
        "longer": [*common, "--methods", "byg", "--seed", "2", "--steps", "3"],
    }
    for name, command in folders.items():
        assert byg([*command, "--out", str(root / name)]) == 0
    return root


def _figures(folder, method):
    return json.loads((folder / "results.json").read_text())["methods"][method]


def test_combine_averages_each_method_over_its_training_seeds(runs, tmp_path, capsys):
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", *(str(runs / n) for n in ("identity", "seed0", "seed1")),
                "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]
    assert summary["identity"]["training_seeds"] == [0] and summary["byg"]["training_seeds"] == [0, 1]
    for method in ("byg", "no_cycle"):
        for key in ("clean_edit", "edit_success", "preservation"):
            values = [_figures(runs / f"seed{s}", method)[key] for s in (0, 1)]
            assert summary[method][f"{key}_by_training_seed"] == values
            assert summary[method][key] == pytest.approx(sum(values) / 2)
            low, high = summary[method][f"{key}_ci"]
            assert low <= summary[method][key] <= high
            family = [_figures(runs / f"seed{s}", method)["by_family"]["shape_kind"][key] for s in (0, 1)]
            assert summary[method]["by_family"]["shape_kind"][key] == pytest.approx(sum(family) / 2)
    printed = capsys.readouterr().out
    assert "By edit family" in printed and "| no_cycle | edits more, preserves less |" in printed and (out / "summary.md").read_text() in printed


def test_combine_refuses_runs_that_do_not_compare(runs, tmp_path, capsys):
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(runs / "longer"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "settings.steps" in err and "longer" in err and "seed0" in err and not out.exists()
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(runs / "seed0"), "--out", str(out)]) == 2
    assert "byg at training seed 0 is in two of the runs" in capsys.readouterr().err
    assert byg(["bench", "combine", "--runs", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere/results.json: no such file" in capsys.readouterr().err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    report = json.loads((runs / "seed1" / "results.json").read_text())
    (unfinished / "results.json").write_text(json.dumps({**report, "complete": False}))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(unfinished), "--out", str(out)]) == 2
    assert "unfinished/results.json: the run did not finish" in capsys.readouterr().err
    assert byg(["bench", "combine", "--out", str(out)]) == 2
    assert "no runs given" in capsys.readouterr().err
    assert byg(["bench", "--runs", str(runs / "seed0"), "--out", str(out)]) == 2  # --runs outside combine
    assert "byg bench combine" in capsys.readouterr().err


def test_a_run_made_before_a_setting_existed_combines_with_one_at_its_default(runs, tmp_path, capsys):
    older = tmp_path / "older"  # seed 1's run as a byg without adam_beta2 had written it
    older.mkdir()
    report = json.loads((runs / "seed1" / "results.json").read_text())
    assert report["settings"].pop("adam_beta2") == 0.999
    (older / "results.json").write_text(json.dumps(report))
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(older), "--out", str(out)]) == 0
    other = tmp_path / "other"  # at another value it is a different setting
    other.mkdir()
    (other / "results.json").write_text(json.dumps({**report, "settings": {**report["settings"], "adam_beta2": 0.99}}))
    assert byg(["bench", "combine", "--runs", str(older), str(other), "--out", str(tmp_path / "no")]) == 2
    assert "differ in settings.adam_beta2" in capsys.readouterr().err


def test_the_baselines_guidance_only_counts_for_runs_with_a_baseline_it_changes(runs, tmp_path, capsys):
    """ByG's seeds combine with a run of the guided baselines (its guidance changed none of ByG's figures); two runs of
    a baseline at different guidance do not."""
    report = json.loads((runs / "identity" / "results.json").read_text())
    assert (report["settings"]["baseline_src_guidance"], report["settings"]["baseline_tgt_guidance"]) == (1.0, 1.0)
    flowedit = {**report, "methods": {"flowedit": report["methods"]["identity"]}}
    for name, guidance, seed in (("guided", 5.5, 0), ("unguided", 1.0, 1)):
        (tmp_path / name).mkdir()
        settings = {**report["settings"], "baseline_src_guidance": 1.5 if guidance != 1 else 1.0,
                    "baseline_tgt_guidance": guidance, "seed": seed}
        (tmp_path / name / "results.json").write_text(json.dumps({**flowedit, "settings": settings}))
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "guided"), "--out", str(out)]) == 0
    assert set(json.loads((out / "summary.json").read_text())["methods"]) == {"byg", "no_cycle", "flowedit"}
    assert byg(["bench", "combine", "--runs", str(tmp_path / "guided"), str(tmp_path / "unguided"),
                "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "settings.baseline_src_guidance: 1.0 vs 1.5" in err and "settings.baseline_tgt_guidance: 1.0 vs 5.5" in err


def test_the_prior_guidance_only_counts_for_runs_with_a_method_that_trains_with_the_prior(runs, tmp_path, capsys):
    """A supervised run recorded at another prior guidance combines with ByG's seeds (the prior changed none of its
    figures); ByG at two prior guidances does not."""
    report = json.loads((runs / "seed1" / "results.json").read_text())
    assert report["settings"]["prior_guidance"] == 1.0
    for name, methods in (("supervised", {"supervised": report["methods"]["byg"]}), ("guided", report["methods"])):
        (tmp_path / name).mkdir()
        settings = {**report["settings"], "prior_guidance": 4.0}
        (tmp_path / name / "results.json").write_text(json.dumps({**report, "methods": methods, "settings": settings}))
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "supervised"), "--out", str(out)]) == 0
    assert set(json.loads((out / "summary.json").read_text())["methods"]) == {"byg", "no_cycle", "supervised"}
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "guided"),
                "--out", str(tmp_path / "no")]) == 2
    assert "differ in settings.prior_guidance: 4.0 vs 1.0" in capsys.readouterr().err
    # nor ByG at the same guidance of other velocities (a run made before the setting existed guided them all)
    settings = {**report["settings"], "prior_guidance": 4.0, "prior_guidance_terms": "anchor"}
    (tmp_path / "anchor").mkdir()
    (tmp_path / "anchor" / "results.json").write_text(json.dumps({**report, "settings": settings}))
    assert byg(["bench", "combine", "--runs", str(tmp_path / "guided"), str(tmp_path / "anchor"),
                "--out", str(tmp_path / "no")]) == 2
    assert "differ in settings.prior_guidance_terms: anchor vs all" in capsys.readouterr().err


def test_the_ablation_reading_needs_the_paired_interval_to_exclude_zero():
    def entry(change, low, high):
        return {"against_byg": {
            "edit_success": {"change": change, "ci": [low, high], "by_training_seed": {"0": {"change": change,
                                                                                           "ci": [low, high]}}},
            "preservation": {"change": -change, "ci": [-high, -low], "by_training_seed": {"0": {"change": -change,
                                                                                               "ci": [-high, -low]}}}}}

    summary = {"byg": {}, "no_cycle": entry(0.1, 0.05, 0.15), "no_bootstrapping": entry(0.02, -0.01, 0.05)}
    assert direction(summary, "no_cycle", "edit_success", +1) == (pytest.approx(0.1), "yes (one training run, seed 0)")
    assert direction(summary, "no_cycle", "preservation", +1) == (pytest.approx(-0.1),
                                                                   "opposite (one training run, seed 0)")
    assert direction(summary, "no_bootstrapping", "edit_success", -1)[1] == "within noise (one training run, seed 0)"
    assert direction(summary, "no_bootstrapping", "preservation", 0)[1] == "-"
    # over training seeds the verdict rests on the interval that counts their spread: here it holds 0
    summary["no_cycle"]["against_byg"]["edit_success"] |= {"seed_change": 0.1, "seed_ci": [-0.02, 0.22]}
    assert direction(summary, "no_cycle", "edit_success", +1)[1] == "within noise"
    summary["no_cycle"]["against_byg"]["edit_success"]["seed_ci"] = [0.02, 0.18]
    assert direction(summary, "no_cycle", "edit_success", +1)[1] == "yes"


def test_t_quantiles_are_students_and_fall_to_the_normals():
    """The quantile against the t density integrated independently (Simpson, 20000 steps), fractions of a degree of
    freedom included (Satterthwaite's), and the normal's in the limit."""
    import math

    from byg_core.toy.metrics import Z_95, t_quantile

    def coverage(q, df, steps=20000):
        density = lambda x: math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)  # noqa: E731
                                     - (df + 1) / 2 * math.log1p(x * x / df)) / math.sqrt(df * math.pi)
        h = q / steps
        return 2 * h / 3 * sum((1 if i in (0, steps) else 4 if i % 2 else 2) * density(i * h) for i in range(steps + 1))

    for df in (1, 1.5, 2, 2.5, 4, 12, 60):
        assert coverage(t_quantile(df), df) == pytest.approx(0.95, abs=2e-4)
    assert t_quantile(1) == pytest.approx(12.706, abs=2e-3) and t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(1e9) == pytest.approx(Z_95) and t_quantile(3) > t_quantile(3.5) > t_quantile(4)
    with pytest.raises(ValueError):
        t_quantile(0.5)


@pytest.mark.parametrize("seeds, seed_sd", [(2, 0.0), (2, 0.03), (2, 0.1), (3, 0.03), (3, 0.1)])
def test_the_interval_over_seeds_and_tuples_covers_a_true_change_95_percent_of_the_time(seeds, seed_sd):
    """Simulated per-seed paired changes d = mu + tuple + seed + noise over 2 or 3 training seeds and 200 tuples: the
    interval holds mu in at least 95% of draws whether the seeds differ or not (at Satterthwaite's pooled degrees of
    freedom it held it in about 90% at two seeds; the tuples' interval alone in about half with a seed spread of 0.1);
    one seed gives none."""
    from byg_core.toy.metrics import over_seeds_and_tuples, paired_change

    g = torch.Generator().manual_seed(seeds)
    held, tuple_only, widths = 0, 0, []
    trials = 400
    for _ in range(trials):
        tuples = 0.2 * torch.randn(200, generator=g)
        table = [(0.1 + tuples + seed_sd * torch.randn(1, generator=g) + 0.3 * torch.randn(200, generator=g)).tolist()
                 for _ in range(seeds)]
        _, low, high = over_seeds_and_tuples(table)
        held += low <= 0.1 <= high
        _, tuple_low, tuple_high = paired_change([sum(c) / seeds for c in zip(*table)], [0.0] * 200)
        tuple_only += tuple_low <= 0.1 <= tuple_high
        widths.append((high - low) / (tuple_high - tuple_low))
    assert 0.94 <= held / trials  # measured: 0.96-1.00
    # and no wider than two or three seeds make it (measured, times the tuples' width: 2 seeds 4.2 / 6.4 / 17.6 at a
    # seed spread of 0 / 0.03 / 0.1; 3 seeds 2.6 / 6.4 at 0.03 / 0.1): t(1) = 12.7 at two seeds
    assert sum(widths) / trials < {2: 25, 3: 9}[seeds]
    if seed_sd == 0.1:
        assert tuple_only / trials < 0.75
    assert over_seeds_and_tuples([[0.1, 0.2]]) is None


def test_combine_pairs_each_method_with_byg_tuple_by_tuple(runs, tmp_path):
    """The paired change is the mean over tuples of (method - ByG), each tuple's rate averaged over the training
    seeds first, as recomputed from the runs' own per-tuple outcomes; the baseline's one run pairs with both seeds."""
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", *(str(runs / n) for n in ("identity", "seed0", "seed1")),
                "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())["methods"]
    assert "against_byg" not in summary["byg"]
    for method, folders in (("no_cycle", ("seed0", "seed1")), ("identity", ("identity",))):
        for key in ("clean_edit", "edit_success", "preservation"):
            mine = [_figures(runs / f, method)["per_tuple"][key] for f in folders]
            byg_ = [_figures(runs / f"seed{s}", "byg")["per_tuple"][key] for s in (0, 1)]
            assert len(mine[0]) == _figures(runs / "seed0", "byg")["n"]
            d = [sum(m) / len(m) - sum(b) / len(b) for m, b in zip(zip(*mine), zip(*byg_))]
            paired = summary[method]["against_byg"][key]
            assert paired["change"] == pytest.approx(sum(d) / len(d))
            assert paired["ci"][0] <= paired["change"] <= paired["ci"][1]
            # each training seed paired with ByG's own (the untrained baseline's one run with each of ByG's seeds)
            at_seed = {str(s): sum(m - b for m, b in zip(mine[0 if len(mine) == 1 else s], byg_[s])) / len(d)
                       for s in (0, 1)}
            assert {s: v["change"] for s, v in paired["by_training_seed"].items()} == pytest.approx(at_seed)
            assert paired["seed_ci"][0] <= paired["ci"][0] + 1e-12 and paired["seed_ci"][1] >= paired["ci"][1] - 1e-12
    assert byg(["bench", "combine", "--runs", str(runs / "identity"), "--out", str(tmp_path / "alone")]) == 0
    alone = (tmp_path / "alone" / "summary.md").read_text()
    # no ByG and no ablation among the runs: no empty tables
    assert "| identity |" in alone and "Against ByG" not in alone and "Ablations against ByG" not in alone
    # a per-tuple rate averages the noise seeds, and the rate is the mean of the per-tuple rates
    seed0 = _figures(runs / "seed0", "byg")
    assert seed0["clean_edit"] == pytest.approx(sum(seed0["per_tuple"]["clean_edit"]) / seed0["n"])


def test_combine_refuses_runs_without_per_tuple_outcomes(runs, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    report = json.loads((runs / "seed1" / "results.json").read_text())
    for figures in report["methods"].values():
        del figures["per_tuple"]
    (old / "results.json").write_text(json.dumps(report))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(old), "--out", str(tmp_path / "o")]) == 2
    assert "old/results.json: written by an older byg without each tuple's outcomes" in capsys.readouterr().err


def test_combine_against_runs_of_another_setting_pairs_each_common_method(runs, tmp_path, capsys):
    """--against: the change from another setting's runs (here 3 training steps, seed 2) to the --runs, tuple by tuple,
    each tuple's rate averaged over each side's training seeds; what the settings differ in is named."""
    out = tmp_path / "against"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(runs / "seed1"),
                "--against", str(runs / "longer"), "--out", str(out)]) == 0
    record = json.loads((out / "summary.json").read_text())
    changes = record["against"]["changes"]
    assert list(changes) == ["byg"]  # no_cycle has no run at the other setting
    assert any(d.startswith("settings.steps: ") for d in record["against"]["settings_differ"])
    assert record["against"]["methods"]["byg"]["training_seeds"] == [2]
    for key in ("clean_edit", "edit_success", "preservation"):
        mine = [_figures(runs / f"seed{s}", "byg")["per_tuple"][key] for s in (0, 1)]
        other = _figures(runs / "longer", "byg")["per_tuple"][key]
        d = [(a + b) / 2 - c for a, b, c in zip(*mine, other)]
        assert changes["byg"][key]["change"] == pytest.approx(sum(d) / len(d))
        low, high = changes["byg"][key]["ci"]
        assert low <= changes["byg"][key]["change"] <= high
    printed = capsys.readouterr().out
    assert "Change from the --against runs to the --runs" in printed and "settings.steps" in printed
    assert (out / "summary.md").read_text() in printed


def test_combine_against_refuses_what_does_not_pair(runs, tmp_path, capsys):
    assert byg(["bench", "combine", "--runs", str(runs / "identity"), "--against", str(runs / "longer"),
                "--out", str(tmp_path / "a")]) == 2
    assert "no method in common" in capsys.readouterr().err
    elsewhere = tmp_path / "elsewhere"  # scored on another held-out draw
    elsewhere.mkdir()
    report = json.loads((runs / "longer" / "results.json").read_text())
    (elsewhere / "results.json").write_text(json.dumps({**report, "held_out": {**report["held_out"], "eval_seed": 7}}))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), "--against", str(elsewhere),
                "--out", str(tmp_path / "b")]) == 2
    assert "another held-out set" in capsys.readouterr().err and not (tmp_path / "b").exists()
    assert byg(["bench", "--against", str(runs / "seed0"), "--out", str(tmp_path / "c")]) == 2  # outside combine
    assert "byg bench combine" in capsys.readouterr().err


def test_runs_on_two_bases_of_one_name_are_refused_by_their_contents(runs, tmp_path, capsys):
    """The GPU script names its pretrained bases as the shipped ones: the base's SHA-256 tells them apart; a run written
    before the hash was recorded combines by the name alone."""
    from byg_core.toy.bench import file_sha256
    from byg_core.toy.model import DEFAULT_TOY_WEIGHTS

    report = json.loads((runs / "seed1" / "results.json").read_text())
    assert report["base_sha256"] == file_sha256(DEFAULT_TOY_WEIGHTS)
    for name, sha in (("other_base", "0" * 64), ("older", None)):
        (tmp_path / name).mkdir()
        changed = {k: v for k, v in report.items() if k != "base_sha256"} | ({"base_sha256": sha} if sha else {})
        (tmp_path / name / "results.json").write_text(json.dumps(changed))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "other_base"),
                "--out", str(tmp_path / "no")]) == 2
    assert "differ in base sha256: " in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "older"),
                "--out", str(tmp_path / "yes")]) == 0


def test_runs_scored_by_another_clean_edit_rule_do_not_combine(runs, tmp_path, capsys):
    """A run that records no rule was scored by the image's pixels alone, which passed a small shape recoloured in
    part: its clean edits do not average with, or pair against, a run scored by the rule with the shapes' colours."""
    report = json.loads((runs / "seed1" / "results.json").read_text())
    assert report["held_out"]["clean_edit_rule"].startswith("95% of the pixels right and 95% of the shapes' pixels")
    (tmp_path / "older").mkdir()
    held_out = {k: v for k, v in report["held_out"].items() if k != "clean_edit_rule"}
    (tmp_path / "older" / "results.json").write_text(json.dumps({**report, "held_out": held_out}))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), str(tmp_path / "older"),
                "--out", str(tmp_path / "no")]) == 2
    assert "differ in clean_edit rule: 95% of the pixels right vs 95% of the pixels right and" in capsys.readouterr().err
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), "--against", str(tmp_path / "older"),
                "--out", str(tmp_path / "no")]) == 2
    assert "another clean-edit rule" in capsys.readouterr().err


def figures(per_tuple: dict[str, list[float]], seconds: float = 1.0) -> dict:
    """One bench run's figures for one method, from its per-tuple rates (every family given the mean)."""
    from byg_core.toy.world import FAMILIES

    means = {key: sum(values) / len(values) for key, values in per_tuple.items()}
    return {"n": len(next(iter(per_tuple.values()))), "seconds": seconds, "per_tuple": per_tuple, **means,
            "by_family": {family: dict(means) for family in FAMILIES}}


def test_an_ablation_at_one_seed_is_read_against_byg_at_that_seed_not_byg_over_its_seeds():
    """ByG over seeds 0, 1, 2 against an ablation at seed 2 only: the verdict compares the two at seed 2 (the
    ablation edits less than ByG's seed 2: opposite), never the ablation against ByG's mean over its three seeds
    (which read +0.3, 'yes (one training run)', on a real pair of runs of this kind); with three ByG seeds against
    two, the printed change over seeds is the one the verdict rests on."""
    from byg_core.toy.summary import _change, summarise

    def run(level, n=200):
        values = [level + (0.1 if i % 2 else -0.1) for i in range(n)]
        return figures({"clean_edit": values, "edit_success": values, "preservation": values})

    runs = {"byg": {0: run(0.3), 1: run(0.3), 2: run(0.8)}, "no_cycle": {2: run(0.7)}}
    summary = summarise(runs)
    value, verdict = direction(summary, "no_cycle", "edit_success", +1)
    assert value == pytest.approx(-0.1) and verdict == "opposite (one training run, seed 2)"
    runs["no_cycle"] = {0: run(0.35), 2: run(0.75)}
    paired = summarise(runs)["no_cycle"]["against_byg"]["edit_success"]
    assert paired["seed_change"] == pytest.approx(-0.0, abs=1e-9) and paired["change"] == pytest.approx(0.083, abs=1e-3)
    assert "; seeds 0, 2: +0.000 [" in _change(paired) or "; seeds 0, 2: -0.000 [" in _change(paired)
    summary = summarise({"byg": {0: run(0.3)}, "no_cycle": {1: run(0.7)}})
    assert direction(summary, "no_cycle", "edit_success", +1)[1] == "no training seed in common"


def test_a_rates_interval_over_seeds_is_never_narrower_than_over_the_tuples():
    """No clean edit at two seeds: the interval over seeds had no spread to measure and read [0, 0]."""
    from byg_core.toy.metrics import wilson_interval
    from byg_core.toy.summary import summarise

    zero = figures({"clean_edit": [0.0] * 576, "edit_success": [0.0] * 576, "preservation": [1.0] * 576})
    entry = summarise({"no_regularization": {0: zero, 1: zero}})["no_regularization"]
    assert entry["clean_edit_seed_ci"] == pytest.approx(list(wilson_interval(0.0, 576)))
    assert entry["preservation_seed_ci"] == pytest.approx(list(wilson_interval(1.0, 576)))
    assert entry["clean_edit_seed_ci"][1] > 0.005


def test_combine_pairs_only_runs_scored_on_the_same_tuples_and_whole_per_tuple_lists(runs, tmp_path, capsys):
    """per_tuple lists are paired by position: a run scored on other tuples under the same eval seed (the held-out
    sampler once changed so) or a list cut short was paired element by element (or crashed later); a run from before
    the tuples were hashed still combines with one after."""
    import shutil

    report = json.loads((runs / "seed1" / "results.json").read_text())
    assert len(report["held_out"]["tuples_sha256"]) == 64

    def variant(name, change):
        folder = tmp_path / name
        shutil.copytree(runs / "seed1", folder)
        changed = json.loads(json.dumps(report))
        change(changed)
        (folder / "results.json").write_text(json.dumps(changed))
        return str(folder)

    other = variant("other_tuples", lambda r: r["held_out"].update(tuples_sha256="0" * 64))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), other, "--out", str(tmp_path / "no")]) == 2
    assert "differ in held-out tuples sha256" in capsys.readouterr().err
    cut = variant("cut", lambda r: r["methods"]["byg"]["per_tuple"]["edit_success"].pop())
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), cut, "--out", str(tmp_path / "no")]) == 2
    n = report["held_out"]["tuples"]
    assert f"byg's per_tuple holds {n - 1}, {n} outcomes for {n} held-out tuples" in capsys.readouterr().err
    older = variant("older", lambda r: r["held_out"].pop("tuples_sha256"))
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), older, "--out", str(tmp_path / "yes")]) == 0


def test_a_training_seed_that_draws_held_out_scenes_is_refused(tmp_path, capsys):
    """The held-out scenes come from seeds 10000 and up, the training tuples from sample_tuples(n_train, seed): seed
    10000 trained on 70 of draw 0's scenes."""
    assert byg(["bench", "--smoke", "--methods", "identity", "--seed", "10000", "--out", str(tmp_path / "b")]) == 2
    assert "seed must be in [0, 10000), got 10000" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # nor is a toy dataset drawn from them (a LoRA trained on it and scored on a held-out draw), nor a base pretrained on them
    assert byg(["toy", "dataset", "--seed", "10001", "--n", "2", "--out", str(tmp_path / "d")]) == 2
    assert "--seed must be in [0, 10000), got 10001" in capsys.readouterr().err and not (tmp_path / "d").exists()
    from byg_core.toy.video import write_video_dataset

    with pytest.raises(ValueError, match=r"seed must be in \[0, 10000\), got 10000"):  # python -m byg_core.toy.video
        write_video_dataset(tmp_path / "v", 1, seed=10000)
    assert not (tmp_path / "v").exists()


def test_combine_never_replaces_an_earlier_summary_unasked(runs, tmp_path, capsys):
    """Every other command refuses an --out holding its output; combine wrote over summary.md silently."""
    out = tmp_path / "combined"
    assert byg(["bench", "combine", "--runs", str(runs / "seed0"), "--out", str(out)]) == 0
    (out / "summary.md").write_text("my notes on this summary")
    with pytest.raises(SystemExit, match=r"summary.md, .*summary.json already exist; nothing was overwritten"):
        byg(["bench", "combine", "--runs", str(runs / "seed1"), "--out", str(out)])
    assert (out / "summary.md").read_text() == "my notes on this summary"
    assert byg(["bench", "combine", "--runs", str(runs / "seed1"), "--out", str(out), "--overwrite"]) == 0
    assert (out / "summary.md").read_text() != "my notes on this summary"
