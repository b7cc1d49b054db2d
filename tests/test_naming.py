"""Intent-name quality: cosine with the packaged MiniLM, ROUGE-L, and the copy counter."""

from __future__ import annotations

import pandas as pd
import pytest

from eval.naming import category_path_names, compare_names, copied_from_prompt, instruction_text, score_names
from prompts import render

OLD_PROMPT = (
    "You group products from one shopping session into bundles.\n"
    '- Each bundle has 2 to 4 products and a short intent name such as "Camera accessories".\n'
    "CANDIDATES (number: product):\n"
    '<data name="candidates">\n1: Canon EOS battery grip\n2: SanDisk 64GB SD card\n</data>\n'
)


def test_copy_counter_counts_instruction_words_not_product_titles() -> None:
    assert copied_from_prompt("Camera accessories", OLD_PROMPT)
    assert copied_from_prompt("candidates", OLD_PROMPT)  # the data tag's name
    assert copied_from_prompt("CANDIDATES!", OLD_PROMPT)
    assert not copied_from_prompt("SD card", OLD_PROMPT)  # from a title: data, not instructions
    assert not copied_from_prompt("Photography kit", OLD_PROMPT)
    assert not copied_from_prompt("", OLD_PROMPT)
    assert "SanDisk" not in instruction_text(OLD_PROMPT) and 'name="candidates"' in instruction_text(OLD_PROMPT)


def test_the_grouping_prompt_offers_no_name_to_copy() -> None:
    rows = [{"number": "1", "title": "Canon battery"}, {"number": "2", "title": "SD card"}]
    prompt = "\n".join(m["content"] for m in render("bundle_items", candidates=rows, n_bundles=1, max_size=4))
    for name in ("Camera accessories", "candidates", "Candidates"):
        assert not copied_from_prompt(name, prompt)


def test_name_metrics_rank_hand_made_names() -> None:
    truth = [["Camera batteries and memory"], ["Home office networking"]]
    good = [["Camera batteries"], ["Office network"]]
    bad = [["Kitchen knives"], ["Garden hose"]]
    copied = [["candidates"], ["Camera accessories"]]
    s_good, s_bad = score_names(good, truth), score_names(bad, truth)
    assert s_good["cosine"]["mean"] > s_bad["cosine"]["mean"] + 0.2
    assert s_good["rouge_l"]["mean"] > 0.5 and s_bad["rouge_l"]["mean"] == 0.0
    exact = score_names(truth, truth)
    assert exact["cosine"]["mean"] == pytest.approx(1.0, abs=1e-5) and exact["rouge_l"]["mean"] == 1.0
    c = score_names(copied, truth, [OLD_PROMPT, OLD_PROMPT])
    assert c["copied_from_prompt"] == 2 and c["copied_examples"] == ["Camera accessories", "candidates"]
    assert score_names(good, truth, [OLD_PROMPT, OLD_PROMPT])["copied_from_prompt"] == 0
    none = score_names([[], [""]], truth)
    assert none["cosine"]["mean"] == 0.0 and none["cases_without_names"] == 2
    test = compare_names(s_good, s_bad)
    assert test["cosine"]["mean_difference"] > 0.2
    with pytest.raises(ValueError):
        score_names(good, truth[:1])


def test_category_path_baseline_names_the_deepest_shared_category() -> None:
    catalogue = pd.DataFrame({
        "category": ["Electronics > Camera & Photo > Batteries", "Electronics > Camera & Photo > Memory Cards",
                     "Electronics > Computers > Networking"],
        "product_type": ["Batteries", "Memory Cards", "Networking"],
    }, index=["a", "b", "c"])
    assert category_path_names([("a", "b")], catalogue) == ["Camera & Photo"]


def test_generation_names_compare_an_llm_variant_with_category_paths_of_its_own_bundles() -> None:
    from types import SimpleNamespace as NS

    from eval.naming import generation_names

    catalogue = pd.DataFrame({
        "category": ["Electronics > Camera & Photo > Batteries", "Electronics > Camera & Photo > Memory Cards",
                     "Electronics > Computers > Networking", "Electronics > Computers > Cables"],
        "product_type": ["Batteries", "Memory Cards", "Networking", "Cables"],
    }, index=["a", "b", "c", "d"])
    cases = [NS(case_id="s1", intents=("Camera batteries and memory cards",)),
             NS(case_id="s2", intents=("Home office networking cables",))]
    named = {"s1": [NS(name="Camera batteries and memory", item_ids=("a", "b"))],
             "s2": [NS(name="candidates", item_ids=("c", "d"))]}
    out = generation_names(named, cases, catalogue, seed=0, prompts={"s1": OLD_PROMPT, "s2": OLD_PROMPT})
    assert out["names"]["copied_from_prompt"] == 1 and out["names"]["copied_examples"] == ["candidates"]
    assert len(out["names"]["per_case"]["cosine"]) == 2
    path = out["category_path_same_bundles"]
    assert path["names"] == 2 and path["copied_from_prompt"] == 0
    # the same bundles, named by category path: the copied name loses to "Computers"
    assert out["tests_vs_category_path"]["cosine"]["mean_difference"] == pytest.approx(
        out["names"]["cosine"]["mean"] - path["cosine"]["mean"])
    rules = generation_names(named, cases, catalogue, seed=0)  # no prompt: a rule or baseline system
    assert set(rules) == {"names"} and rules["names"]["copied_from_prompt"] == 0
