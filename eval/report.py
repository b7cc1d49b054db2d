"""Write a protocol's results: ``<protocol>.json``, ``<protocol>.md`` and PNG plots.

The markdown and the plots are rendered from the JSON alone, so an old result can be
re-rendered with ``python -m eval.report eval/results/cj-completion.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

RANKING_COLUMNS = ("hit_rate@3", "hit_rate@5", "hit_rate@10", "recall@3", "recall@5", "recall@10",
                   "precision@3", "precision@5", "precision@10", "ndcg@3", "ndcg@5", "ndcg@10", "mrr")
BAR_METRICS = ("hit_rate@10", "recall@10", "ndcg@10", "mrr")
TESTED = ("ndcg@10", "recall@10", "hit_rate@10", "mrr")
BEYOND_COLUMNS = (  # (key, header, best is the larger value)
    ("coverage@10", "coverage@10", True),
    ("ild@10", "ILD@10", True),
    ("novelty@10", "novelty@10 (bits)", True),
    ("expected_bundle_margin", "bundle margin", True),
    ("invented_product_rate", "invented rate", False),
    ("llm_valid_output_rate", "LLM valid before repair", True),
    ("llm_fallback_rate", "LLM fallback", False),
)
GENERATION_COLUMNS = (
    ("precision", "precision", True),
    ("recall", "recall", True),
    ("coverage", "coverage", True),
    ("matched_recall", "GT matched", True),
    ("pair_precision", "pair P", True),
    ("pair_recall", "pair R", True),
    ("pair_f1", "pair F1", True),
    ("micro_pair_precision", "micro pair P", True),
    ("micro_pair_recall", "micro pair R", True),
    ("micro_pair_f1", "micro pair F1", True),
    ("found_exact", "GT found (exact)", True),
    ("found_jaccard50", "GT found (J≥0.5)", True),
    ("bundles_per_session", "bundles/session", None),
    ("mean_bundle_size", "mean size", None),
    ("invented_product_rate", "invented rate", False),
    ("name_cosine", "name cosine", True),
    ("name_rouge_l", "name ROUGE-L", True),
    ("names_copied", "names copied from prompt", False),
    ("llm_valid_output_rate", "LLM valid before repair", True),
    ("llm_fallback_rate", "LLM fallback", False),
)
GENERATION_TESTED = ("precision", "recall", "pair_f1")
LEVEL_TITLES = {"type": "product-type level", "sku": "SKU level"}
BLOCK_TITLES = {"all": "All cases", "llm_subset": "LLM subset"}


def write_outputs(result: dict, out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = output_name(result)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(json.dumps(result, indent=2) + "\n")
    paths[1].write_text(markdown(result))
    paths += plots(result, out)
    return paths


def output_name(result: dict) -> str:
    """``<protocol>`` for the test split, ``<protocol>-dev`` for the dev split."""
    split = result.get("evaluation_split", "test")
    return result["protocol"] + ("" if split == "test" else f"-{split}")


# --- markdown -----------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def table(rows: dict[str, dict], columns: Sequence[tuple[str, str, bool | None]], first: str = "system") -> str:
    """Markdown table, one row per key of ``rows``; in each column with a direction the
    best value (rounded as shown) is bold, ties included."""
    best = {}
    for key, _, larger in columns:
        values = [round(r[key], 3) for r in rows.values() if isinstance(r.get(key), (int, float))]
        if larger is not None and len(values) > 1:
            best[key] = max(values) if larger else min(values)
    lines = ["| " + " | ".join([first] + [h for _, h, _ in columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = [f"`{name}`"]
        for key, _, _ in columns:
            value = row.get(key)
            text = _fmt(value)
            if key in best and isinstance(value, (int, float)) and round(value, 3) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _means(scores: dict) -> dict[str, dict]:
    return {s: {m: v["mean"] for m, v in by_metric.items()} for s, by_metric in scores.items()}


def _tests_lines(tests: dict, control: str, metrics: Sequence[str]) -> list[str]:
    if not tests:
        return []
    lines = [f"Paired tests against `{control}` (Δ = mean difference; p from a paired t-test / "
             "a 10,000-sample randomisation test; no multiple-comparison correction):", "",
             "| system | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for system, by_metric in tests.items():
        cells = [f"Δ {by_metric[m]['mean_difference']:+.3f} (p {_p(by_metric[m]['t_test'])} / "
                 f"{_p(by_metric[m]['randomisation'])})" for m in metrics]
        lines.append(f"| `{system}` | " + " | ".join(cells) + " |")
    return lines + [""]


def headline(vs_best: dict, title: str) -> list[str]:
    """One sentence per system variant: the best baseline, the ratio and the p-values."""
    lines = []
    for system, v in vs_best.items():
        ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}×"
        lines.append(f"**{title}: `{system}` vs the best baseline `{v['baseline']}` on {v['metric']}**: "
                     f"{v['system']:.3f} vs {v['best']:.3f}, ratio {ratio}, Δ {v['difference']:+.3f} "
                     f"(paired t-test p {_p(v['t_test'])}, randomisation p {_p(v['randomisation'])}).")
    return lines + [""] if lines else []


def _choices_md(result: dict) -> list[str]:
    bc = result.get("baseline_choices")
    if not bc:
        return []
    params = "; ".join(f"`{name}` {json.dumps(p, sort_keys=True)}" for name, p in bc["params"].items())
    where = bc["chosen_on"] or "not tuned"
    lines = [f"Tuned baselines ({where}; from {bc['source']}): {params}.", ""]
    tuning = result.get("tuning")
    if tuning:
        metric = tuning["metric"]
        lines += [f"Dev grid ({tuning['cases']} cases, mean {tuning['level']} {metric}):", "",
                  "| baseline | parameters | " + metric + " |", "|---|---|---|"]
        for name, grid in tuning["grid"].items():
            for g in grid:
                mark = " **(chosen)**" if g["params"] == tuning["choices"][name] else ""
                lines.append(f"| `{name}` | {json.dumps(g['params'], sort_keys=True)}{mark} | {g[metric]:.4f} |")
        lines.append("")
        lines += _grouping_grid_md(tuning.get("system_rule_grouping"))
    return lines


def _grouping_grid_md(grid: dict | None) -> list[str]:
    """The system rule grouping's dev grid: the reference, the chosen setting, the top 10."""
    if not grid:
        return []
    ref, chosen = grid["reference"], grid["chosen"]
    keys = ("precision", "recall", "matched_recall", "pair_f1")
    rows = [("reference " + json.dumps(ref["params"], sort_keys=True), ref)]
    top = sorted(grid["grid"], key=lambda g: -g["pair_f1"])[:10]
    rows += [("**chosen** " + json.dumps(g["params"], sort_keys=True), g)
             for g in grid["grid"] if g["params"] == chosen]
    rows += [(json.dumps(g["params"], sort_keys=True), g) for g in top]
    lines = [f"System rule grouping, dev grid (rule: {grid['rule']}; then the top 10 by pair F1):", "",
             "| setting | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{g[k]:.3f}" for k in keys) + " |" for name, g in rows]
    return lines + [""]


def _completion_md(result: dict) -> list[str]:
    lines: list[str] = _choices_md(result)
    for block_name, block in result["blocks"].items():
        title = BLOCK_TITLES.get(block_name, block_name)
        for level, data in block["levels"].items():
            main = result["main_metric"]["level"] == level
            lines += [f"## {title} ({block['cases']} cases, {data['queries']} scored) — "
                      f"{LEVEL_TITLES.get(level, level)}{' (main)' if main else ''}", ""]
            if main:
                lines += headline(data.get("vs_best_baseline", {}), title)
            lines += [table(_means(data["scores"]), [(c, c, True) for c in RANKING_COLUMNS]), ""]
            lines += _tests_lines(data["tests_vs_best_baseline"], data["best_baseline"], TESTED)
            lines += _tests_lines(data["tests_vs_rule"], "system:rule", TESTED)
        lines += [f"## {title}: beyond accuracy", "",
                  table(block["beyond_accuracy"], BEYOND_COLUMNS), "",
                  "Budget satisfaction: n/a (no case in this protocol carries a budget).", ""]
    tradeoff = result.get("tradeoff")
    if tradeoff:
        lines += [f"## Margin weight trade-off (rule variant, first {tradeoff['cases']} cases, "
                  f"{LEVEL_TITLES[tradeoff['level']]})", "",
                  "| margin weight | NDCG@10 | 95% CI | top-bundle margin |", "|---|---|---|---|"]
        for p in tradeoff["points"]:
            lo, hi = p["ndcg@10_ci95"]
            lines.append(f"| {p['margin_weight']:.1f} | {p['ndcg@10']:.4f} | [{_fmt(lo, 4)}, {_fmt(hi, 4)}] | "
                         f"{_fmt(p['expected_bundle_margin'], 4)} |")
        lines.append("")
    return lines


def _generation_md(result: dict) -> list[str]:
    lines: list[str] = _choices_md(result)
    for block_name, block in result["blocks"].items():
        title = BLOCK_TITLES.get(block_name, block_name)
        rows = {s: {k: (v["mean"] if isinstance(v, dict) else v) for k, v in row.items()}
                for s, row in block["scores"].items()}
        lines += [f"## {title} ({block['cases']} sessions)", ""]
        lines += headline(block.get("vs_best_baseline", {}), title)
        lines += [table(rows, [c for c in GENERATION_COLUMNS if any(c[0] in r for r in rows.values())]), ""]
        if "ground_truth_mean_bundle_size" in block:
            lines += [f"Ground truth: {block['ground_truth_mean_bundle_size']:.2f} items per bundle, "
                      f"{block['ground_truth_bundles_per_session']:.2f} bundles per session. Pair scores: "
                      "co-bundled item pairs (a bundle of n items gives n(n−1)/2); pair P/R/F1 are "
                      "per-session means, micro ones pooled over all pairs.", ""]
        cis = ", ".join(f"`{s}` {m} [{_fmt(r[m]['ci95'][0])}, {_fmt(r[m]['ci95'][1])}]"
                        for s, r in block["scores"].items() for m in ("precision", "pair_f1") if m in r)
        lines += [f"95% bootstrap CIs over sessions: {cis}.", ""]
        tested = [m for m in GENERATION_TESTED if all(m in t for t in block["tests_vs_best_baseline"].values())]
        lines += _tests_lines(block["tests_vs_best_baseline"], block["best_baseline"], tested)
        for system, by_baseline in block.get("tests_vs_each_baseline", {}).items():
            for baseline, tests in by_baseline.items():
                if baseline != block["best_baseline"]:
                    lines += _tests_lines({system: tests}, baseline, tested)
        lines += _tests_lines(block["tests_vs_rule"], "system:rule", tested)
        lines += _names_md(block.get("names") or {})
    sample = result.get("sample") or []
    if sample:
        systems = sorted({s for row in sample for s in row["predicted"]})
        lines += ["## Sample: intent names beside the ground truth", "",
                  "Each predicted bundle as *name* (size, ✓ when it is a subset of a ground-truth bundle).", "",
                  "| session | ground truth | " + " | ".join(f"`{s}`" for s in systems) + " |",
                  "|" + "---|" * (len(systems) + 2)]
        for row in sample:
            gt = "; ".join(f"{_cell(g['intent'])} ({g['size']})" for g in row["ground_truth"])
            cells = []
            for s in systems:
                preds = row["predicted"].get(s)
                cells.append("—" if preds is None else "; ".join(
                    f"*{_cell(p['name'])}* ({p['size']}{', ✓' if p['hit'] else ''})" for p in preds) or "(none)")
            lines.append(f"| {row['session']} ({row['items']} items) | {gt} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _names_md(names: dict) -> list[str]:
    """The LLM variants' intent names against the category-path names of the same bundles."""
    rows = {s: n for s, n in names.items() if "tests_vs_category_path" in n}
    if not rows:
        return []
    lines = ["Intent names of the LLM variants against the category-path names of the very same bundles "
             "(MiniLM cosine / ROUGE-L with the closest ground-truth intent; Δ, paired t-test p):", "",
             "| system | cosine | category path | Δ (p) | ROUGE-L | category path | Δ (p) |",
             "|---|---|---|---|---|---|---|"]
    for s, n in rows.items():
        cells = []
        for m in ("cosine", "rouge_l"):
            t = n["tests_vs_category_path"][m]
            cells += [_fmt(n["names"][m]["mean"]), _fmt(n["category_path_same_bundles"][m]["mean"]),
                      f"{t['mean_difference']:+.3f} ({_p(t['t_test'])})"]
        lines.append(f"| `{s}` | " + " | ".join(cells) + " |")
    return lines + [""]


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ").strip()


def markdown(result: dict) -> str:
    git = result.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    cfg = result["config"]
    split = result.get("evaluation_split", "test")
    lines = [f"# `{result['protocol']}`" + (f" — {split} split (carved from the training data)"
                                            if split != "test" else ""), "",
             f"Seed {result['seed']}, {cfg['cases']} cases, LLM variants on {cfg['llm_cases']} of them; "
             f"commit {commit}.", "",
             "```", result["command"], "```", "",
             "Split: " + ", ".join(f"{k} {v}" for k, v in result["split"].items()) + ".", ""]
    if result["protocol"] == "bundlerec-generation":
        lines += _generation_md(result)
    else:
        lines += _completion_md(result)
    lines.append(f"Run time: {result['timings'].get('total', 0):.0f} s.")
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bars(series: dict[str, dict[str, dict]], metrics: Sequence[str], title: str, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per system, 95% CI whiskers."""
    import numpy as np

    plt = _pyplot()
    systems = list(series)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(metrics) + 0.35 * len(systems)), 4.8))
    x = np.arange(len(metrics))
    for i, s in enumerate(systems):
        means = [series[s][m]["mean"] for m in metrics]
        lows = [series[s][m]["mean"] - (series[s][m]["ci95"][0] if series[s][m]["ci95"][0] is not None
                                        else series[s][m]["mean"]) for m in metrics]
        highs = [(series[s][m]["ci95"][1] if series[s][m]["ci95"][1] is not None else series[s][m]["mean"])
                 - series[s][m]["mean"] for m in metrics]
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, means, width, yerr=[lows, highs], capsize=2,
               label=s, hatch="//" if s.startswith("system:") else None)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel("mean over cases (95% bootstrap CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(4, len(systems)), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_plot(result: dict, path: Path) -> Path:
    plt = _pyplot()
    points = result["tradeoff"]["points"]
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    xs = [p["expected_bundle_margin"] for p in points]
    ys = [p["ndcg@10"] for p in points]
    err = [[p["ndcg@10"] - p["ndcg@10_ci95"][0] for p in points], [p["ndcg@10_ci95"][1] - p["ndcg@10"] for p in points]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label="system:rule")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"w={p['margin_weight']:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    level = result["tradeoff"]["level"]
    block = result["blocks"]["all"]["levels"][level]
    beyond = result["blocks"]["all"]["beyond_accuracy"]
    for name in (block["best_baseline"],):
        margin = beyond[name]["expected_bundle_margin"]
        if margin is not None:
            ax.scatter([margin], [block["scores"][name]["ndcg@10"]["mean"]], marker="s", color="grey",
                       label=f"{name} (best baseline)")
    ax.set_xlabel("mean margin rate of the top bundle, after discount")
    ax.set_ylabel(f"NDCG@10 ({LEVEL_TITLES[level]})")
    ax.set_title(f"Margin weight 0 → 0.8, first {result['tradeoff']['cases']} cases", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(result: dict, out: Path) -> list[Path]:
    name = output_name(result)
    paths = []
    for block_name, block in result["blocks"].items():
        suffix = "" if block_name == "all" else f"-{block_name.replace('_', '-')}"
        if result["protocol"] == "bundlerec-generation":
            shown = [m for m in ("precision", "recall", "coverage", "pair_f1")
                     if all(m in r for r in block["scores"].values())]
            series = {s: {m: r[m] for m in shown} for s, r in block["scores"].items()}
            paths.append(bars(series, shown,
                              f"{name}: {BLOCK_TITLES.get(block_name, block_name)} ({block['cases']} sessions)",
                              out / f"{name}{suffix}-bars.png"))
            continue
        for level, data in block["levels"].items():
            paths.append(bars(data["scores"], BAR_METRICS,
                              f"{name}: {BLOCK_TITLES.get(block_name, block_name)} ({block['cases']} cases), "
                              f"{LEVEL_TITLES.get(level, level)}",
                              out / f"{name}{suffix}-{level}-bars.png"))
    if result.get("tradeoff"):
        paths.append(tradeoff_plot(result, out / f"{name}-margin-tradeoff.png"))
    return paths


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        source = Path(arg)
        for written in write_outputs(json.loads(source.read_text()), source.parent):
            print(written)
