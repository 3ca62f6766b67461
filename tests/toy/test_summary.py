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


def test_the_ablation_reading_needs_a_change_beyond_both_intervals():
    def entry(success, keep):
        return {"edit_success": success, "edit_success_ci": [success - 0.04, success + 0.04],
                "preservation": keep, "preservation_ci": [keep - 0.04, keep + 0.04]}

    summary = {"byg": entry(0.6, 0.3), "no_cycle": entry(0.7, 0.5), "no_bootstrapping": entry(0.62, 0.2)}
    assert direction(summary, "no_cycle", "edit_success", +1) == (pytest.approx(0.1), "yes")
    assert direction(summary, "no_cycle", "preservation", -1) == (pytest.approx(0.2), "opposite")
    assert direction(summary, "no_bootstrapping", "edit_success", -1)[1] == "within noise"  # 0.02 < 0.057
    assert direction(summary, "no_bootstrapping", "preservation", 0)[1] == "-"
