"""LoRA tuning: mined data never touches a test split, training is reproducible, an
adapter loads on top of the real SmolLM2 and changes it, and the base stays the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eval.protocols as P
from assistant.llm import tuning as T
from assistant.llm.adapter import (
    AdapterError,
    AdapterLeak,
    apply_adapter,
    base_fingerprint,
    check_adapter,
    domain_of,
    split_keys,
)
from eval.tuning_data import training_split
from retrieval.sources import DEFAULT_BUNDLEREC, load_source


@pytest.fixture(scope="module")
def electronic():
    if not DEFAULT_BUNDLEREC.is_dir():
        pytest.skip(f"BundleRec Electronic data not at {DEFAULT_BUNDLEREC}")
    return load_source("bundlerec", DEFAULT_BUNDLEREC)


@pytest.fixture(scope="module")
def mined(electronic):
    train, info, held_out = training_split(DEFAULT_BUNDLEREC, seed=0, holdout_dev=True)
    return T.mine(train, 0, need_examples=50, info=info, held_out=held_out)


def test_mined_examples_never_come_from_a_test_or_dev_session(electronic, mined) -> None:
    sources = set(mined.sources())
    test = P.bundlerec_generation(electronic, 0)
    dev = P.bundlerec_generation_dev_of(test, 0)
    assert split_keys(test) and split_keys(dev)
    assert not split_keys(test) & sources
    assert not split_keys(dev) & sources
    # the session ids themselves, not only our keys: no test session is mined
    mined_sessions = {s.rsplit(":", 1)[1] for s in sources if ":session:" in s}
    assert mined_sessions and not mined_sessions & {c.case_id for c in test.cases}
    assert {"grouping", "naming", "need"} <= {e.task for e in mined.examples}


def test_grouping_answers_are_the_sessions_own_bundles_in_the_schema_json(mined) -> None:
    from assistant.proposer import proposal_schema

    ex = next(e for e in mined.examples if e.task == "grouping")
    listed = [line.split(":")[0] for line in ex.messages[1][1].splitlines() if line[:1].isdigit()]
    schema = proposal_schema(listed, 5, 2, 4)
    parsed = schema.model_validate_json(ex.target)  # what the grammar lets the model write
    assert all(b.reason == "" and len(b.name) <= 32 for b in parsed.bundles)
    assert " " not in ex.target.replace('","', "").split('"name":"')[0]  # compact JSON


def test_need_examples_come_from_the_lexicon_not_scenarios() -> None:
    examples = T.mine_needs(40, seed=3)
    assert len({e.messages[1][1] for e in examples}) == 40
    for e in examples:
        need = T.NeedTarget.model_validate_json(e.target)
        assert need.occasion and need.language in ("en", "es")
        assert e.sources[0].startswith("need:")
    assert any(T.NeedTarget.model_validate_json(e.target).language == "es" for e in examples)
    assert T.mine_needs(40, seed=3) == examples  # seeded


def _fake_adapter(folder: Path, sources: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "sources.json").write_text(json.dumps(sources))
    (folder / "card.json").write_text(json.dumps({"name": folder.name, "data": {
        "dataset": "electronic", "protocol": "bundlerec-generation", "seed": 1, "split": "train"}}))
    return folder


def test_eval_refuses_an_adapter_trained_on_its_test_split(electronic, tmp_path: Path) -> None:
    test = P.bundlerec_generation(electronic, 0)
    leaked = sorted(split_keys(test))[:1]
    with pytest.raises(AdapterLeak, match=r"trained on 1 source\(s\) this eval split tests on"):
        check_adapter(_fake_adapter(tmp_path / "leaky", leaked + ["need:x"]), test)
    check_adapter(_fake_adapter(tmp_path / "clean", ["need:x"]), test)  # no overlap: fine
    check_adapter(None, test)  # no adapter: nothing to check
    # another seed's test split overlaps seed 0's training data: a seed-1 eval must refuse
    # an adapter trained on seed 0's training split
    train0 = T.sessions_with_bundles(P.bundlerec_generation(electronic, 0).train)
    domain = domain_of(electronic)
    seed0 = [f"{domain}:session:{s.session_id}" for s in train0]
    with pytest.raises(AdapterLeak):
        check_adapter(_fake_adapter(tmp_path / "seed0", seed0), P.bundlerec_generation(electronic, 1))


def test_eval_command_refuses_a_leaky_adapter_before_building_anything(electronic, tmp_path: Path, capsys) -> None:
    from assistant.cli import main

    leaked = sorted(split_keys(P.bundlerec_generation(electronic, 0)))[:2]
    adapter = _fake_adapter(tmp_path / "leaky", leaked)
    work = tmp_path / "work"
    code = main(["eval", "--protocol", "bundlerec-generation", "--data-dir", str(DEFAULT_BUNDLEREC),
                 "--variants", "llm+rule", "--adapter", str(adapter), "--work-dir", str(work),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "adapter leaky was trained on 2 source(s) this eval split tests on" in err
    assert not work.exists() and not (tmp_path / "out").exists()


def _tiny_examples() -> list[T.Example]:
    # short on purpose: the test trains on the real model on a busy 2-core machine
    pairs = [("snacks for a movie", "Movie night"), ("tacos for four", "Taco night"),
             ("pancakes and syrup", "Breakfast"), ("usb cables", "Cables")]
    return [T.Example("naming", (("system", "Name it."), ("user", text)), T.compact({"name": name}), (f"t:{i}",))
            for i, (text, name) in enumerate(pairs)]


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("Name this bundle: chips, salsa", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits[0, -1].float()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    from assistant.llm.loading import load_llm

    llm = load_llm(device="cpu")
    before = _logits(llm.model, llm.tokenizer)
    fp = base_fingerprint(llm.model)
    runs = []
    for _ in range(2):  # the same seed twice, each from a fresh LoRA on the same base
        model = T.lora_model(llm.model, seed=7)
        # the same two examples every step, so the loss must fall
        runs.append(T.train_lora(model, llm.tokenizer, _tiny_examples()[:2], steps=3, batch=2, lr=2e-2, seed=7,
                                 progress=False))
        out = tmp_path_factory.mktemp("adapter") / "tiny"
        T.save_adapter(model, out)
        T.write_card(out, {"name": "tiny", "base": {"name": llm.name, "fingerprint": fp},
                           "data": {"dataset": "hand-made", "protocol": "-", "seed": 7, "split": "-", "mined": {},
                                    "examples_fingerprint": T.examples_fingerprint(_tiny_examples()),
                                    "train_fingerprint": "-"},
                           "training": {"rank": 8, "alpha": 16, "target_modules": ["q_proj"], "examples": 4,
                                        "examples_by_task": {"naming": 4}, "steps": 4, "batch": 1, "lr": 0.02,
                                        "seed": 7, "max_tokens": 448, "seconds": runs[-1].seconds,
                                        "device": "cpu", "threads": 1, "load_average_start": [],
                                        "tokens": runs[-1].tokens, "losses": runs[-1].losses},
                           "commit": "test", "created": "now"}, ["t:0"])
        llm.model = model.unload()  # back to the plain base for the second run
    return {"runs": runs, "adapter": out, "before": before, "fingerprint": fp}


@pytest.mark.llm
def test_training_is_reproducible_and_lowers_the_loss(trained) -> None:
    a, b = trained["runs"]
    assert len(a.losses) == 3 and a.losses == b.losses
    assert a.losses[-1] < a.losses[0]
    assert [e.target for e in a.used] == [e.target for e in _tiny_examples()[:2]]


@pytest.mark.llm
def test_adapter_loads_on_the_base_and_changes_it_and_the_base_stays_the_base(trained) -> None:
    from assistant.llm.loading import load_llm

    adapter = trained["adapter"]
    assert (adapter / "adapter_model.safetensors").stat().st_size < 4_000_000
    assert {"card.json", "CARD.md", "sources.json", "adapter_config.json"} <= {p.name for p in adapter.iterdir()}
    tuned = load_llm(device="cpu", adapter=adapter)
    assert tuned.name.endswith("+tiny")
    assert not torch.allclose(_logits(tuned.model, tuned.tokenizer), trained["before"], atol=1e-4)
    base = load_llm(device="cpu")
    assert torch.allclose(_logits(base.model, base.tokenizer), trained["before"], atol=1e-5)
    assert base_fingerprint(base.model) == trained["fingerprint"]
    card = json.loads((adapter / "card.json").read_text())
    card["base"]["fingerprint"] = "0" * 16
    (adapter / "card.json").write_text(json.dumps(card))
    with pytest.raises(AdapterError, match="fingerprint"):
        apply_adapter(base.model, adapter)


def test_the_shipped_adapter_never_saw_seed_0s_test_or_dev_sessions(electronic) -> None:
    from assistant.llm.adapter import PACKAGED_ADAPTER, read_card, resolve_adapter

    folder = resolve_adapter(PACKAGED_ADAPTER)
    card = read_card(folder)
    assert card["data"]["seed"] == 0 and card["data"]["split"] == "train minus dev"
    assert (folder / "adapter_model.safetensors").stat().st_size < 4_000_000
    assert (folder / "loss_curve.png").is_file() and card["training"]["steps"] == len(card["training"]["losses"])
    test = P.bundlerec_generation(electronic, 0)
    check_adapter(folder, test)  # the eval's refusal does not fire
    check_adapter(folder, P.bundlerec_generation_dev_of(test, 0))
    with pytest.raises(AdapterLeak):  # while seed 1's test split holds sessions it learnt from
        check_adapter(folder, P.bundlerec_generation(electronic, 1))
