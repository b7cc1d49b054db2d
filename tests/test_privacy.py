"""Privacy (issue 6, part 6, the parts below the UI).

Raw user ids are pseudonymised everywhere they are stored: a shop whose user ids are
unmistakable strings is indexed, recommended for and given feedback, and then every byte
the data dir holds (Chroma's database and segment files, the build folder, the feedback
database) is searched for them. Prompts are rendered for real users and searched for ids;
Complete Journey household 1 (the slice's household with demographics) shows that profiles
and prompts carry household composition only, never age, income, marital status or home
ownership. ``bundle-assistant forget`` is run for real.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

import pytest
from conftest import build, executable, subprocess_env

from assistant.feedback import FeedbackEvent, FeedbackStore
from assistant.llm import Structured
from assistant.privacy import is_pseudonym, pseudonymise
from assistant.service import BundleAssistant
from retrieval.config import Settings
from retrieval.index import Index
from retrieval.sources import load_source
from retrieval.store import scrub_unused_capacity, unused_capacity

# user ids nobody could mistake for anything else
RAW_IDS = ["hh-RAWID-0042-alice@example.com", "hh-RAWID-0043-bob", "hh-RAWID-0044-carol"]
PRODUCTS = """product_id,title,price,department,category
A1,Spaghetti 16 oz,1.29,GROCERY,GROCERY > PASTA > DRY PASTA
A2,Marinara Sauce 24 oz,2.69,GROCERY,GROCERY > SAUCES > PASTA SAUCE
A3,Grated Parmesan 8 oz,4.49,DAIRY,DAIRY > CHEESE > GRATED
A4,Garlic Bread,2.99,BAKERY,BAKERY > BREAD > GARLIC BREAD
A5,Corn Tortillas 30 ct,2.49,GROCERY,GROCERY > TORTILLAS > CORN
A6,Ground Beef 1 lb,5.49,MEAT,MEAT > BEEF > GROUND
A7,Medium Salsa 16 oz,2.99,GROCERY,GROCERY > SAUCES > SALSA
A8,Sour Cream 16 oz,1.89,DAIRY,DAIRY > CREAM > SOUR CREAM
"""
BASKETS = {RAW_IDS[0]: [("A1", "A2", "A3"), ("A1", "A4")], RAW_IDS[1]: [("A5", "A6", "A7", "A8")],
           RAW_IDS[2]: [("A2", "A4", "A6"), ("A9",)]}  # A9: an unknown product, quarantined
SENSITIVE_FIELDS = ("age", "income", "home_ownership", "marital_status")


class PromptRecorder:
    """A model that writes nothing useful but keeps every prompt it is shown."""

    name, device = "recorder", "cpu"

    def __init__(self):
        self.prompts: list[str] = []

    def generate_structured(self, messages, output_type, **kwargs):
        self.prompts.append("\n".join(m["content"] for m in messages))
        return Structured(raw="", parsed=None, parse_error="empty", new_tokens=0, seconds=0.0, timed_out=False)


@pytest.fixture(scope="module")
def shop(tmp_path_factory, embedder) -> Path:
    root = tmp_path_factory.mktemp("privacy-shop")
    (root / "source").mkdir()
    (root / "source" / "products.csv").write_text(PRODUCTS)
    rows = ["user_id,product_id,timestamp,basket_id,event"]
    for user, baskets in BASKETS.items():
        for day, basket in enumerate(baskets, start=1):
            rows += [f"{user},{pid},2024-05-{day:02d},{user}-b{day},purchase" for pid in basket]
    rows.append(f"{RAW_IDS[1]},A1,not-a-date,x,purchase")  # a bad timestamp: quarantined too
    data = ("\n".join(rows) + "\n").encode()
    # a user id that is not UTF-8: the row is quarantined, and the id must not go with it
    data += b"hh-RAWID-0045-d\xe9,A1,2024-05-01,y,purchase\n"
    (root / "source" / "interactions.csv").write_bytes(data)
    settings = Settings(data_dir=root / "data", chroma_url=None)
    ds = load_source("csv", root / "source", settings=settings)
    assert set(ds.interactions["user_id"]) == set(RAW_IDS) and len(ds.quarantine) == 3
    build(ds, settings, embedder)
    return settings.data_dir


def stored_bytes(data_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in data_dir.rglob("*") if p.is_file()}


def test_no_raw_user_id_is_stored_or_shown_to_the_model(shop, embedder, caplog):
    caplog.set_level(logging.DEBUG)
    recorder = PromptRecorder()
    assistant = BundleAssistant(Settings(data_dir=shop, chroma_url=None), llm=recorder, embedder=embedder)
    store = FeedbackStore(shop / "feedback.sqlite")
    for user in RAW_IDS:
        rec = assistant.recommend(user_id=user, query="dinner tonight", k=3, mode="llm+rule")
        assert rec.bundles
        for b in rec.bundles:
            store.record(FeedbackEvent.for_user(user, data_dir=shop, session_id="web-1", event="like",
                                                bundle_key="+".join(b.item_ids), product_ids=b.item_ids))
        assert not any(raw in rec.model_dump_json() for raw in RAW_IDS)
    store.close()

    # the prompts the model saw: no raw id, and not even the pseudonym
    assert len(recorder.prompts) == len(RAW_IDS)
    keys = [pseudonymise(u, data_dir=shop) for u in RAW_IDS]
    for prompt in recorder.prompts:
        assert not [x for x in RAW_IDS + keys + ["RAWID"] if x in prompt], prompt

    # every byte on disk: Chroma's sqlite and segment files, build folder, feedback database
    files = stored_bytes(shop)
    assert any(name.startswith("chroma") for name in files) and "feedback.sqlite" in files
    assert any(name.endswith("quarantine.csv") for name in files)
    leaks = {name: raw for name, data in files.items() for raw in RAW_IDS + ["RAWID"]
             if raw.encode() in data}
    assert not leaks, f"raw user ids stored in: {leaks}"
    # hnswlib persists its buffers at full capacity unzeroed (chroma-core/chroma#7688):
    # the build zeroes the unused slots, and nothing after it writes them again
    unused = unused_capacity(shop / "chroma")
    assert unused and not [p.name for p, start in unused if any(p.read_bytes()[start:])]
    assert not [r.getMessage() for r in caplog.records if "RAWID" in r.getMessage()]

    # what is stored instead: pseudonyms, as Chroma ids and inside the profiles
    index = Index(Settings(data_dir=shop, chroma_url=None))
    got = index.store.get(index.profiles_collection).get(include=["metadatas"])
    assert sorted(got["ids"]) == sorted(keys) and all(is_pseudonym(i) for i in got["ids"])
    for meta in got["metadatas"]:
        assert is_pseudonym(re.search(r'"user_key":"([^"]+)"', meta["profile_json"]).group(1))
    events = FeedbackStore(shop / "feedback.sqlite").events()
    assert set(events["user_pseudo"]) == set(keys)


def _segment(folder: Path, version: int, capacity: int, live: int, per_element: int, fill: bytes) -> Path:
    """A persisted HNSW segment as hnswlib writes it: header, level-0 data, vector lengths."""
    import struct

    folder.mkdir(parents=True)
    (folder / "header.bin").write_bytes(struct.pack("<iQQQQ", version, 0, capacity, live, per_element) + bytes(60))
    (folder / "data_level0.bin").write_bytes((fill * capacity * per_element)[: capacity * per_element])
    (folder / "length.bin").write_bytes((fill * capacity * 4)[: capacity * 4])
    return folder


def test_unused_hnsw_capacity_is_zeroed_and_live_slots_and_unknown_files_are_kept(tmp_path):
    heap = b"hh-RAWID-0042;"
    seg = _segment(tmp_path / "a", 1, capacity=10, live=3, per_element=24, fill=heap)
    full = _segment(tmp_path / "b", 1, capacity=4, live=4, per_element=24, fill=heap)  # no unused slot
    other = _segment(tmp_path / "c", 2, capacity=10, live=3, per_element=24, fill=heap)  # a format we do not know
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.bin")}
    changed = scrub_unused_capacity(tmp_path)
    assert sorted(p.name for p in changed) == ["data_level0.bin", "length.bin"]
    level0, lengths = (seg / "data_level0.bin").read_bytes(), (seg / "length.bin").read_bytes()
    assert level0[: 3 * 24] == before[seg / "data_level0.bin"][: 3 * 24] and not any(level0[3 * 24:])
    assert lengths[:12] == before[seg / "length.bin"][:12] and not any(lengths[12:])
    assert len(level0) == 240 and len(lengths) == 40  # zeroed, not truncated
    for folder in (full, other):
        assert all((folder / n).read_bytes() == before[folder / n] for n in ("data_level0.bin", "length.bin"))
    assert scrub_unused_capacity(tmp_path) == changed and unused_capacity(tmp_path) == [
        (seg / "data_level0.bin", 72), (seg / "length.bin", 12)]


def test_forget_via_the_cli_deletes_that_users_feedback(shop, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "hmac_secret").write_bytes((shop / "hmac_secret").read_bytes())
    store = FeedbackStore(data / "feedback.sqlite")
    for user in RAW_IDS:
        for n in range(3):
            store.record(FeedbackEvent.for_user(user, data_dir=data, session_id=f"s{n}", event="cart",
                                                product_ids=["A1"], reason=f"note {n}"))
    store.close()
    target, key = RAW_IDS[0], pseudonymise(RAW_IDS[0], data_dir=data)
    proc = subprocess.run([executable("bundle-assistant"), "forget", target, "--data-dir", str(data), "--json"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '"deleted_events": 3' in proc.stdout and target not in proc.stdout + proc.stderr
    left = FeedbackStore(data / "feedback.sqlite").events()
    assert key not in set(left["user_pseudo"]) and len(left) == 6  # the others keep theirs
    # gone from the disk, not just unlinked: the pseudonym's bytes are nowhere in the files
    assert not [n for n, b in stored_bytes(data).items() if key.encode() in b]


@pytest.fixture(scope="module")
def household_one(cj_slice) -> dict[str, str]:
    demo = cj_slice.users.set_index("user_id")
    assert "1" in demo.index, "household 1 (with demographics) is not in the slice"
    return {k: str(v) for k, v in demo.loc["1"].items()}


def test_profiles_and_prompts_carry_household_composition_only(cj_assistant, cj_slice_dir, embedder,
                                                               household_one, caplog):
    caplog.set_level(logging.DEBUG)
    sensitive = [household_one[f] for f in SENSITIVE_FIELDS if household_one.get(f)]
    assert sensitive  # household 1 has an age and an income band to leak
    words = re.compile(r"\b(?:age|aged|income|salary|married|unmarried|single|homeowner|renter|"
                       r"home ?owner)\b", re.I)
    profile = cj_assistant.profile("1")
    assert household_one["household_comp"] in profile.summary  # what sizing a bundle needs is there
    stored = cj_assistant.index.store.fetch(cj_assistant.index.profiles_collection, [profile.user_key])
    texts = {"summary": profile.summary, "stored profile": str(stored[profile.user_key]["metadata"])}
    assert set(profile.demographics) <= {"household_size", "household_comp", "kids_count"}

    recorder = PromptRecorder()
    assistant = BundleAssistant(Settings(data_dir=cj_slice_dir, chroma_url=None), llm=recorder, embedder=embedder)
    assistant.recommend(user_id="1", query="weekend breakfast", k=3, mode="llm")
    (prompt,) = recorder.prompts
    texts["prompt"] = prompt
    texts["log"] = "\n".join(r.getMessage() for r in caplog.records)
    for where, text in texts.items():
        assert not [v for v in sensitive if v in text], f"{where} holds a sensitive demographic"
        assert not words.search(text), f"{where}: {words.search(text).group(0)!r}"
    # and no id: neither the household's pseudonym nor a field that could carry one
    assert profile.user_key not in prompt and not re.search(r"\b(?:household|user)[ _-]?id\b", prompt, re.I)
