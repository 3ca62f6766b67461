"""Several ``byg bench`` runs read as one table: each method over its training seeds (issue 17, part 3).

``byg bench combine --runs DIR... --out OUT`` and ``scripts/toy_gpu_bench.py`` both end here: every run's
``results.json`` is read, the runs must share the held-out set, the base and the settings (all but the
training seed), and each method's rates are averaged over its training seeds; each method is then compared with
ByG tuple by tuple (the same held-out tuples), and each ablation read against ByG beside the paper's Table-4
direction. ``--against DIR...`` reads runs of another setting (another base, learning rate, length...) on the same
held-out set, and each method of both is compared across the two settings tuple by tuple.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from ..safefiles import write_text_atomic
from .bench import ABLATIONS, BASELINES, ToySettings, _rate, guided_baseline_methods, prior_methods
from .metrics import IMAGE_ONLY_RULE, RATE_KEYS, over_seeds_and_tuples, paired_change, wilson_interval
from .world import FAMILIES

# The paper's Table-4 directions (Sec. 6, Table 4): (what the paper reports, sign of the change in edit success, sign of
# the change in preservation) against full ByG; 0 = not a claim.
PAPER_DIRECTIONS = {
    "no_regularization": ("collapses to the identity: edits far less", -1, +1),
    "no_cycle": ("edits more, preserves less", +1, -1),
    "no_gradient_routing": ("edits more, preserves less", +1, -1),
    "no_directional": ("edits more, preserves less", +1, -1),
    "no_bootstrapping": ("edits less and preserves less", -1, -1),
    "no_identity_steps": ("preserves a little less", 0, -1),
}


BASELINE_GUIDANCE = ("settings.baseline_src_guidance", "settings.baseline_tgt_guidance")
# settings that change some methods' figures alone, each with those of a run's methods it changes: a run without one
# of them does not record the setting, so it combines with runs at any value of it
CHANGES_ONLY = {**{key: guided_baseline_methods for key in BASELINE_GUIDANCE},
                **{key: prior_methods for key in ("settings.prior_guidance", "settings.prior_guidance_terms")}}


# what newer runs record and older ones lack: compared where both runs record it
RECORDED_SINCE = ("base sha256", "held-out tuples sha256")


def _comparable(report: dict) -> dict:
    """What must match for two runs' figures to be averaged: the held-out set, the base, every setting but the seed."""
    # a setting added since a run was made is the default it ran with (adam_beta2, lora_targets, ...)
    defaults = {f.name: f.default for f in dataclasses.fields(ToySettings) if f.name not in report["settings"]}
    settings = {f"settings.{k}": v for k, v in {**defaults, **report["settings"]}.items() if k != "seed"}
    settings = {k: v for k, v in settings.items() if k not in CHANGES_ONLY or CHANGES_ONLY[k](list(report["methods"]))}
    base = {"base sha256": report["base_sha256"]} if "base_sha256" in report else {}  # older runs lack it
    held_out = dict(report["held_out"])
    rule = held_out.pop("clean_edit_rule", IMAGE_ONLY_RULE)  # a run that records none scored by the image alone
    tuples = {"held-out tuples sha256": held_out.pop("tuples_sha256")} if "tuples_sha256" in held_out else {}
    return {"held_out": held_out, "clean_edit rule": rule, "base file": Path(report["base"]).name, **base, **tuples,
            **settings}


def _differing(key: dict, other: dict) -> list[str]:
    """The ``_comparable`` keys two runs differ in; a ``CHANGES_ONLY`` setting only where both ran a method it changes."""
    return [k for k in {**key, **other} if key.get(k) != other.get(k)
            and (k not in (*CHANGES_ONLY, *RECORDED_SINCE) or (k in key and k in other))]


def settings_differ(key: dict, other: dict) -> list[str]:
    """What two settings' runs differ in (``_comparable``'s keys), each as 'name: this vs other'."""
    return [f"{k}: {key.get(k)} vs {other.get(k)}" for k in _differing(key, other)]


def collect(folders: Sequence[str | Path]) -> tuple[dict[str, dict[int, dict]], dict]:
    """method -> training seed -> its figures, from each folder's results.json, and what the runs share
    (``_comparable``); refuses runs that do not compare."""
    runs: dict[str, dict[int, dict]] = {}
    shared: dict = {}  # what the runs so far share, and which run each entry came from
    origin: dict[str, Path] = {}
    for folder in map(Path, folders):
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; each --runs folder is a `byg bench --out` folder")
        report = json.loads(path.read_text())
        if not report.get("complete"):
            raise ValueError(f"{path}: the run did not finish; run `byg bench` again, into a new folder or into "
                             "this one with --overwrite")
        if any("per_tuple" not in figures for figures in report["methods"].values()):
            raise ValueError(f"{path}: written by an older byg without each tuple's outcomes (per_tuple), which the "
                             "paired comparison needs; run `byg bench` into a new folder again")
        for method, figures in report["methods"].items():  # paired with other runs' tuple by tuple, by position
            counts = {len(figures["per_tuple"][rate]) for rate in RATE_KEYS}
            if counts != {report["held_out"]["tuples"]}:
                raise ValueError(f"{path}: {method}'s per_tuple holds {', '.join(map(str, sorted(counts)))} outcomes "
                                 f"for {report['held_out']['tuples']} held-out tuples; the file was changed since "
                                 "the bench wrote it")
        key = _comparable(report)
        differ = _differing(key, shared) if shared else []
        if differ:
            where = " and ".join(sorted({str(origin[k]) for k in differ if k in origin}))
            raise ValueError(f"{path} and {where} differ in {'; '.join(settings_differ(key, shared))}: only runs that "
                             "differ in the training seed alone can be combined")
        origin.update({k: path for k in key if k not in shared})
        shared = {**key, **shared}
        seed = report["settings"]["seed"]
        for method, figures in report["methods"].items():
            if seed in runs.setdefault(method, {}):
                raise ValueError(f"{path}: {method} at training seed {seed} is in two of the runs; pass one of them")
            runs[method][seed] = figures
    if not shared:
        raise ValueError("no runs given: pass the `byg bench --out` folders to combine")
    return runs, shared


def _per_tuple(by_seed: dict[int, dict], key: str) -> list[float]:
    """Each held-out tuple's rate, averaged over the method's training seeds."""
    seeds = [by_seed[s]["per_tuple"][key] for s in sorted(by_seed)]
    return [sum(values) / len(values) for values in zip(*seeds)]


def _seed_pairs(a: tuple[str, dict[int, dict]], b: tuple[str, dict[int, dict]]) -> list[tuple[int, dict, dict]]:
    """(training seed, a's figures, b's) for each training seed both ran; an untrained baseline's one run (its
    figures are the same at any seed) pairs with each of the other side's seeds."""
    (a_name, a_runs), (b_name, b_runs) = a, b
    a_fixed, b_fixed = a_name in BASELINES, b_name in BASELINES
    if a_fixed and b_fixed:
        return [(min(a_runs), a_runs[min(a_runs)], b_runs[min(b_runs)])]
    if a_fixed or b_fixed:
        fixed, trained = (a_runs, b_runs) if a_fixed else (b_runs, a_runs)
        one = fixed[min(fixed)]
        return [(s, one, trained[s]) if a_fixed else (s, trained[s], one) for s in sorted(trained)]
    return [(s, a_runs[s], b_runs[s]) for s in sorted(set(a_runs) & set(b_runs))]


def paired(a: tuple[str, dict[int, dict]], b: tuple[str, dict[int, dict]], key: str) -> dict:
    """Method a minus method b on rate ``key``, each given as (name, training seed -> figures): ``change`` and ``ci``,
    paired over the held-out tuples (each tuple's rate averaged over each side's training seeds first; the interval
    holds the training runs fixed); ``by_training_seed``, the change at each seed both ran, with its tuple interval;
    and where there are two such seeds or more, ``seed_change`` and ``seed_ci``: the change over those seeds and the
    interval that counts the training seeds' spread too (``metrics.over_seeds_and_tuples``), what a verdict rests on."""
    change, low, high = paired_change(_per_tuple(a[1], key), _per_tuple(b[1], key))
    result = {"change": change, "ci": [low, high], "by_training_seed": {}}
    table = []  # per training seed both ran: each tuple's change
    for seed, mine, theirs in _seed_pairs(a, b):
        table.append([x - y for x, y in zip(mine["per_tuple"][key], theirs["per_tuple"][key])])
        at_seed, seed_low, seed_high = paired_change(mine["per_tuple"][key], theirs["per_tuple"][key])
        result["by_training_seed"][str(seed)] = {"change": at_seed, "ci": [seed_low, seed_high]}
    over_seeds = over_seeds_and_tuples(table)
    if over_seeds is not None:  # over the seeds both ran, which may be fewer than either side's
        result["seed_change"], result["seed_ci"] = over_seeds[0], list(over_seeds[1:])
    return result


def summarise(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Per method and rate: the mean over training seeds, its Wilson interval over the tuples, each seed's value and,
    over two seeds or more, ``<rate>_seed_ci``, the interval that counts the seeds' spread too; ``against_byg``: the
    change against ByG (``paired``)."""
    summary = {}
    for method, by_seed in runs.items():
        per_seed = [by_seed[s] for s in sorted(by_seed)]
        n = per_seed[0]["n"]
        entry = {"n_tuples": n, "training_seeds": sorted(by_seed),
                 "minutes": sum(r["seconds"] for r in per_seed) / 60}
        for key in RATE_KEYS:
            values = [r[key] for r in per_seed]
            mean = sum(values) / len(values)
            entry[key] = mean
            entry[f"{key}_ci"] = list(wilson_interval(mean, n))
            entry[f"{key}_by_training_seed"] = values
            over_seeds = over_seeds_and_tuples([r["per_tuple"][key] for r in per_seed])
            if over_seeds is not None:  # never narrower than the tuples' own (a rate of 0 or 1 shows no spread)
                low, high = entry[f"{key}_ci"]
                entry[f"{key}_seed_ci"] = [max(0.0, min(low, over_seeds[1])), min(1.0, max(high, over_seeds[2]))]
        entry["by_family"] = {family: {key: sum(r["by_family"][family][key] for r in per_seed) / len(per_seed)
                                       for key in RATE_KEYS} for family in FAMILIES}
        if "byg" in runs and method != "byg":
            entry["against_byg"] = {key: paired((method, by_seed), ("byg", runs["byg"]), key) for key in RATE_KEYS}
        summary[method] = entry
    return summary


def against(these: tuple[dict[str, dict[int, dict]], dict], others: tuple[dict[str, dict[int, dict]], dict]
            ) -> dict[str, dict]:
    """Each method of both settings (each side as ``collect`` returns it: the runs and what they share): for each
    rate the change from ``others``' runs to ``these``, ``paired`` tuple by tuple; refused unless both sides were
    scored on the same held-out tuples."""
    (runs, key), (other, other_key) = these, others
    for part, what in (("held_out", "held-out set"), ("clean_edit rule", "clean-edit rule"),
                       ("held-out tuples sha256", "held-out set's tuples")):
        if part in key and part in other_key and other_key[part] != key[part]:  # the hash: runs since 2026-12-07
            raise ValueError(f"the --against runs were scored on another {what} than the --runs: {other_key[part]} "
                             f"vs {key[part]}; only runs scored alike on the same held-out tuples pair")
    common = [method for method in runs if method in other]
    if not common:
        raise ValueError(f"the --runs ({', '.join(runs)}) and the --against runs ({', '.join(other)}) have no method "
                         "in common to compare")
    changes = {}
    for method in common:
        changes[method] = {"training_seeds": sorted(runs[method]), "against_training_seeds": sorted(other[method])}
        for rate in RATE_KEYS:
            changes[method][rate] = paired((method, runs[method]), (method, other[method]), rate)
    return changes


def _cell(entry: dict, key: str) -> str:
    values = entry[f"{key}_by_training_seed"]
    seeds = entry.get(f"{key}_seed_ci")
    over_seeds = f"; seeds [{seeds[0]:.3f}, {seeds[1]:.3f}]" if seeds else ""
    return f"{_rate(entry, key)} ({min(values):.2f}-{max(values):.2f}{over_seeds})"


def table(summary: dict[str, dict]) -> str:
    lines = ["| method | " + " | ".join(f"{k} [95% CI over tuples] (training seeds' range; [95% CI over tuples and "
                                       "seeds])" for k in RATE_KEYS)
             + " | training seeds | minutes |", "|" + "---|" * (len(RATE_KEYS) + 3)]
    for method, entry in summary.items():
        seeds = ", ".join(map(str, entry["training_seeds"]))
        lines.append(f"| {method} | " + " | ".join(_cell(entry, k) for k in RATE_KEYS)
                     + f" | {seeds} | {entry['minutes']:.1f} |")
    return "\n".join(lines)


def family_table(summary: dict[str, dict]) -> str:
    """Each edit family's rates, averaged over the training seeds: which edits a method makes or misses."""
    lines = ["| method | " + " | ".join(f"{f}: " + " / ".join(RATE_KEYS) for f in FAMILIES) + " |",
             "|" + "---|" * (len(FAMILIES) + 1)]
    for method, entry in summary.items():
        lines.append(f"| {method} | " + " | ".join(" / ".join(f"{entry['by_family'][f][k]:.2f}" for k in RATE_KEYS)
                                                   for f in FAMILIES) + " |")
    return "\n".join(lines)


def _change(change: dict) -> str:
    """A paired change and its intervals (``paired``), as printed: over the tuples, then over tuples and seeds."""
    text = f"{change['change']:+.3f} [{change['ci'][0]:+.3f}, {change['ci'][1]:+.3f}]"
    if "seed_ci" in change:  # over the seeds both sides ran, which may be fewer than either side's
        text += (f"; seeds {', '.join(change['by_training_seed'])}: {change['seed_change']:+.3f} "
                 f"[{change['seed_ci'][0]:+.3f}, {change['seed_ci'][1]:+.3f}]")
    return text


def against_table(changes: dict[str, dict]) -> str:
    """Each method's change from the --against runs to the --runs, tuple by tuple, with its 95% interval."""
    keys = " | ".join(f"{k} change [95% CI]" for k in RATE_KEYS)
    lines = [f"| method | {keys} | training seeds (--against's) |", "|" + "---|" * (len(RATE_KEYS) + 2)]
    for method, entry in changes.items():
        seeds = f"{', '.join(map(str, entry['training_seeds']))} ({', '.join(map(str, entry['against_training_seeds']))})"
        lines.append(f"| {method} | " + " | ".join(_change(entry[k]) for k in RATE_KEYS) + f" | {seeds} |")
    return "\n".join(lines)


def against_byg_table(summary: dict[str, dict]) -> str:
    """Each method's change against ByG, tuple by tuple on the same held-out tuples, with its 95% interval; empty
    without ByG."""
    keys = " | ".join(f"{k} change [95% CI]" for k in RATE_KEYS)
    lines = [f"| method | {keys} |", "|" + "---|" * (len(RATE_KEYS) + 1)]
    for method, entry in summary.items():
        if "against_byg" in entry:
            lines.append(f"| {method} | " + " | ".join(_change(entry["against_byg"][k]) for k in RATE_KEYS) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def direction(summary: dict, method: str, key: str, sign: int) -> tuple[float, str]:
    """The paired change against ByG over the training seeds both sides ran, and whether it goes the paper's way: its
    95% interval over the tuples and those seeds excludes 0; where the two sides share one training seed, the change
    at that seed with its interval over the tuples alone, and the verdict says it holds for that one training run
    (never one side's seed against the other's mean over other seeds); none where they share no seed."""
    change = summary[method]["against_byg"][key]
    shared = change.get("by_training_seed", {})
    if "seed_ci" in change:
        value, (low, high), basis = change["seed_change"], change["seed_ci"], ""
    elif len(shared) == 1:
        seed, at = next(iter(shared.items()))
        value, (low, high), basis = at["change"], at["ci"], f" (one training run, seed {seed})"
    else:
        return change["change"], "no training seed in common" if sign else "-"
    if sign == 0:
        return value, "-"
    if low <= 0 <= high:
        return value, "within noise" + basis
    return value, ("yes" if sign * value > 0 else "opposite") + basis


def directions_table(summary: dict[str, dict]) -> str:
    """Each ablation's paired change beside the paper's Table-4 direction; empty when no ablation has ByG beside it."""
    lines = ["| ablation | paper (Table 4) | edit success change [95% CI] | as the paper? | preservation change [95% CI] "
             "| as the paper? | clean edit change [95% CI] | training seeds (ByG's) |", "|" + "---|" * 8]
    for method in (m for m in ABLATIONS if m in summary and "byg" in summary):
        paper, edit_sign, keep_sign = PAPER_DIRECTIONS[method]
        entry = summary[method]
        _, edit_verdict = direction(summary, method, "edit_success", edit_sign)
        _, keep_verdict = direction(summary, method, "preservation", keep_sign)
        seeds = f"{len(entry['training_seeds'])} ({len(summary['byg']['training_seeds'])})"
        paired = entry["against_byg"]
        lines.append(f"| {method} | {paper} | {_change(paired['edit_success'])} | {edit_verdict} | "
                     f"{_change(paired['preservation'])} | {keep_verdict} | {_change(paired['clean_edit'])} | {seeds} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def summary_text(summary: dict[str, dict]) -> str:
    sections = [("By edit family (mean over training seeds)", family_table(summary)),
                ("Against ByG, paired over the same held-out tuples (each tuple's rate averaged over the training "
                 "seeds)", against_byg_table(summary)),
                ("Ablations against ByG (paired; 'within noise' where the change's 95% interval holds 0)",
                 directions_table(summary))]
    return table(summary) + "".join(f"\n\n{title}:\n\n{text}" for title, text in sections if text)


def combine_runs(folders: Sequence[str | Path], out: Path, against_folders: Sequence[str | Path] = ()) -> dict[str, dict]:
    """``byg bench combine``: the runs' summary, printed and written to OUT/summary.md and OUT/summary.json; with
    ``against_folders`` (runs of another setting on the same held-out set) also each method's change from those
    runs to these, tuple by tuple, and what the two settings differ in."""
    runs, key = collect(folders)
    summary = summarise(runs)
    text = f"Combined from {len(folders)} `byg bench` runs:\n\n" + summary_text(summary) + "\n"
    record: dict = {"runs": [str(f) for f in folders], "methods": summary}
    if against_folders:
        other, other_key = collect(against_folders)
        differ = settings_differ(key, other_key)
        changes = against((runs, key), (other, other_key))
        other_summary = summarise(other)
        text += (f"\nThe --against runs ({len(against_folders)}):\n\n" + table(other_summary)
                 + "\n\nChange from the --against runs to the --runs, paired over the same held-out tuples (each "
                 "tuple's rate averaged over each side's training seeds); the settings differ in "
                 + ("; ".join(differ) if differ else "nothing but the training seeds") + ":\n\n"
                 + against_table(changes) + "\n")
        record["against"] = {"runs": [str(f) for f in against_folders], "settings_differ": differ,
                             "methods": other_summary, "changes": changes}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "summary.md", text)
    write_text_atomic(out / "summary.json", json.dumps(record, indent=2))
    print(text + f"wrote {out / 'summary.md'}, {out / 'summary.json'}")
    return summary
