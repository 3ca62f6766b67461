"""`byg bench speed`: one interleaved run's ratios, written to speed.json (figures themselves are benchmarks)."""

import json

from byg_core import cli


def test_bench_speed_writes_the_ratios_and_where_a_step_goes(tmp_path, capsys):
    assert cli.main(["bench", "speed", "--model", "toy", "--batch", "2", "--rank", "2", "--repeats", "1",
                     "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "speed.json").read_text())
    assert {"time_ratio", "time_ratio_cache", "flop_ratio", "memory_ratio", "batch", "rank"} <= set(report)
    # the rollout alone is n = 10 no-grad passes: ByG costs several supervised steps in FLOPs
    assert report["flop_ratio"] > 4 and report["time_ratio"] > 1 and report["byg_peak_mib"] > 0
    # without its rollout a step is still three grad passes and four base queries: (3 x 3 + 4) / 3 supervised passes
    assert 3.5 < report["flop_ratio_no_rollout"] < 5 < report["flop_ratio"]
    assert set(report["byg_phases_s"]) == {"rollout", "identity", "forward", "base", "reverse", "backward", "optimizer"}
    assert "time ratio" in capsys.readouterr().out
