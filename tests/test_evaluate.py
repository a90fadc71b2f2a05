"""`cldg evaluate` on a tiny trained model, `compare_runs` and the human-evaluation sheets."""
from __future__ import annotations

import csv
import json

import pytest

from cldg.config import CommonOptions
from cldg.errors import CldgError


@pytest.fixture(scope="module")
def model_workdir(tmp_path_factory, prepared_workdir):
    """A workdir of its own with a tiny seq2seq reference trained on the shared prepare artifact."""
    from cldg.stages import pretrain

    _, prepared = prepared_workdir
    workdir = tmp_path_factory.mktemp("evalwork")
    cfg = pretrain.Config(model="seq2seq", prepare_dir=prepared.path, embedding_dim=16, hidden_size=16,
                          num_layers=1, batch_size=16, epochs=3, dropout=0.0)
    art = pretrain.run(cfg, CommonOptions(workdir=workdir, seed=1, device="cpu"))
    return workdir, art, prepared


def evaluate(workdir, force=False, **kw):
    from cldg.stages import evaluate as ev

    cfg = ev.Config(**({"model": "reference", "max_len": 10, "batch_size": 8} | kw))
    return ev.run(cfg, CommonOptions(workdir=workdir, seed=5, device="cpu", force=force))


@pytest.fixture(scope="module")
def greedy_run(model_workdir):
    return evaluate(model_workdir[0], decoding="greedy")


@pytest.fixture(scope="module")
def beam_run(model_workdir):
    return evaluate(model_workdir[0], decoding="beam", beam_size=3, no_repeat_ngram=2)


def read_generations(art):
    return [json.loads(line) for line in art.file("generations.jsonl").read_text().splitlines()]


def test_evaluate_writes_consistent_artifact(greedy_run, model_workdir):
    from cldg.data.pairs import read_pairs
    from cldg.metrics import TABLE_LAYOUT, compute_all
    from cldg.metrics.embedding import WordVectors
    from cldg.text.ngrams import load_ngram_counts
    from cldg.text.tokenizer import DialogueTokenizer
    from cldg.text.vectors import load_word_vectors

    _, _, prepared = model_workdir
    art = greedy_run
    assert art.stage == "eval"
    for name in ("generations.jsonl", "metrics.json", "report.md", "metrics.png", "lengths.png"):
        assert art.file(name).is_file()
    for png in ("metrics.png", "lengths.png"):
        assert art.file(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(art.file("metrics.json").read_text())
    gens = read_generations(art)
    test = read_pairs(prepared.file("pairs-test.parquet"))
    assert len(gens) == len(test) == metrics["responses"]
    assert [g["pair_id"] for g in gens] == list(test.pair_id)
    assert [g["reference"] for g in gens] == list(test.response)
    assert any(g["generated"] for g in gens)
    # the metrics recomputed independently from the written generations match metrics.json
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    vectors, has = load_word_vectors(prepared.file("word-vectors.safetensors"))
    counts = load_ngram_counts(prepared.file("ngram-counts.parquet"))
    corpus, per = compute_all([tok.words(g["generated"]) for g in gens], [tok.words(g["reference"]) for g in gens],
                              [tok.words(g["context"][-1]) for g in gens], counts,
                              WordVectors(vectors, has, tok.token_to_id, counts.get(1, {})))
    for _, key in TABLE_LAYOUT:
        assert metrics[key] == pytest.approx(corpus[key], rel=1e-6, abs=1e-9), key
    for key in ("bleu2", "average", "coherence", "ent1"):
        assert [g["metrics"][key] for g in gens] == pytest.approx(per[key])
    assert 1.0 < metrics["reference_ppl"] < tok.vocab_size * 2
    assert 0 < metrics["length"] <= 10
    assert metrics["coherence"] > 0 and metrics["average"] > 0  # the tiny corpus is all in vocabulary
    report = art.file("report.md").read_text()
    assert "| BLEU-1 |" in report and "Coh." in report and "ref ppl" in report


def test_evaluate_is_skipped_when_done_and_model_dir_is_the_same_run(greedy_run, model_workdir):
    workdir, reference, _ = model_workdir
    again = evaluate(workdir, decoding="greedy", model=str(reference.path), batch_size=3)
    assert again.path == greedy_run.path  # same model, config and seed: same artifact, not recomputed


def test_evaluate_beam_differs_and_respects_blocking(beam_run, greedy_run):
    assert beam_run.path != greedy_run.path
    for g in read_generations(beam_run):
        words = g["generated"].split()
        bigrams = list(zip(words, words[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_sampled_evaluation_does_not_depend_on_batch_size(model_workdir):
    workdir = model_workdir[0]
    a = [g["generated"] for g in read_generations(evaluate(workdir, decoding="nucleus", top_p=0.9, batch_size=16))]
    b = [g["generated"] for g in read_generations(evaluate(workdir, decoding="nucleus", top_p=0.9, batch_size=3,
                                                           force=True))]
    assert a == b
    greedy = [g["generated"] for g in read_generations(evaluate(workdir, decoding="greedy"))]
    assert a != greedy  # it did sample


def test_evaluate_bad_input(model_workdir, tmp_path):
    from cldg.errors import MissingArtifactError

    with pytest.raises(CldgError, match="--beam-size"):
        evaluate(model_workdir[0], decoding="beam", beam_size=0)
    with pytest.raises(MissingArtifactError, match="pretrain"):
        evaluate(tmp_path, model="reference")
    with pytest.raises(CldgError, match="not a model"):
        evaluate(model_workdir[0], model=str(model_workdir[2].path))  # a prepare artifact


def test_evaluate_json_cli(greedy_run, model_workdir):
    from typer.testing import CliRunner

    from cldg.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--workdir", str(model_workdir[0]), "--model", "reference",
                                      "--max-len", "10", "--seed", "5", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    start = result.stdout.index("{")
    assert json.loads(result.stdout[start:]) == json.loads(greedy_run.file("metrics.json").read_text())


def test_compare_runs(greedy_run, beam_run, model_workdir, tmp_path):
    from cldg.tools.compare import compare_runs

    out = tmp_path / "cmp"
    result = compare_runs([greedy_run.path, beam_run.path], model_workdir[0], out, as_json=False)
    assert [r["path"] for r in result["runs"]] == [str(greedy_run.path), str(beam_run.path)]
    g = json.loads(greedy_run.file("metrics.json").read_text())
    b = json.loads(beam_run.file("metrics.json").read_text())
    diffs = result["differences"][0]["metrics"]
    for key in ("bleu1", "average", "dist1", "length"):
        assert diffs[key]["diff"] == pytest.approx(b[key] - g[key], abs=1e-9)
        assert diffs[key]["ci_low"] <= diffs[key]["ci_high"]
    assert result["best"]["bleu1"] == [r["name"] for r, m in zip(result["runs"], (g, b)) if m["bleu1"] ==
                                       max(g["bleu1"], b["bleu1"])]
    assert "length" not in result["best"]
    for name in ("comparison.json", "comparison.md", "comparison.png"):
        assert (out / name).is_file()
    assert "**" in (out / "comparison.md").read_text()
    # the distinct counts, counted from each run's generated tokens, beside Dist; the difference has an interval
    for run, art in zip(result["runs"], (greedy_run, beam_run)):
        tokens = [json.loads(line)["generated_tokens"] for line in art.file("generations.jsonl").read_text().splitlines()]
        assert run["metrics"]["distinct_words"] == len({w for t in tokens for w in t})
        assert run["metrics"]["distinct_replies"] == len({tuple(t) for t in tokens})
    words = diffs["distinct_words"]
    assert words["diff"] == result["runs"][1]["metrics"]["distinct_words"] - result["runs"][0]["metrics"]["distinct_words"]
    assert words["ci_low"] <= words["diff"] <= words["ci_high"]
    assert "| distinct replies |" in (out / "comparison.md").read_text()
    # Dist at one length: both runs' replies cut, context by context, to the shorter one, then Dist-n over the cut
    from cldg.metrics.diversity import cut_to_shortest, distinct_n

    tokens = [[json.loads(line)["generated_tokens"] for line in art.file("generations.jsonl").read_text().splitlines()]
              for art in (greedy_run, beam_run)]
    cut = cut_to_shortest(tokens)
    for run, words in zip(result["runs"], cut):
        assert run["metrics"]["dist2_matched"] == distinct_n(words, 2)
    matched = diffs["dist1_matched"]
    assert matched["diff"] == pytest.approx(distinct_n(cut[1], 1) - distinct_n(cut[0], 1), abs=1e-12)
    assert matched["ci_low"] <= matched["diff"] <= matched["ci_high"]
    assert "| Dist-2, length-matched |" in (out / "comparison.md").read_text()
    # a run against itself: every difference and interval is exactly 0
    same = compare_runs([greedy_run.path, greedy_run.path], model_workdir[0], None, as_json=True)
    assert all(d["diff"] == 0 and d["ci_low"] == 0 == d["ci_high"] for d in same["differences"][0]["metrics"].values())
    # by fingerprint under WORKDIR/eval
    by_name = compare_runs([greedy_run.fingerprint], model_workdir[0], None, as_json=True)
    assert by_name["runs"][0]["path"] == str(greedy_run.path)


def test_compare_bad_input(greedy_run, model_workdir, tmp_path):
    from cldg.tools.compare import compare_runs

    workdir, reference, _ = model_workdir
    with pytest.raises(CldgError, match="not an evaluate run"):
        compare_runs([reference.path], workdir, None, True)
    with pytest.raises(CldgError, match="not an evaluate artifact"):
        compare_runs([tmp_path / "nothing"], workdir, None, True)
    short = evaluate(workdir, decoding="greedy", limit=3)
    with pytest.raises(CldgError, match="other pairs"):
        compare_runs([greedy_run.path, short.path], workdir, None, True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CldgError, match="--out .*afile: is a file"):
        compare_runs([greedy_run.path, greedy_run.path], workdir, tmp_path / "afile", True)


def test_models_go_by_their_approach_or_stage_name_and_a_typo_lists_the_names(greedy_run, model_workdir, tmp_path):
    """`compare reference` and `evaluate --model mle` name the same model as `compare mle` and `--model reference`
    (each took only one of the two); a mistyped name lists the names instead of a missing manifest.json."""
    from cldg.artifacts import ArtifactStore
    from cldg.model_artifacts import resolve_model
    from cldg.tools.compare import resolve_run

    workdir, reference, _ = model_workdir
    store = ArtifactStore(workdir)
    assert resolve_model(store, "mle").path.resolve() == resolve_model(store, "reference").path.resolve()
    assert resolve_run("reference", workdir) == resolve_run("mle", workdir)
    with pytest.raises(CldgError, match=r"model 'Reference': not a model name \(.*mle.*reference.*\)"):
        resolve_model(store, "Reference")


def fill(sheet, dest, key, choose):
    """Copy a sheet, writing `choose(item, system_of_response_1)` in the preference column."""
    rows = list(csv.DictReader(open(sheet, encoding="utf-8")))
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r["preference"] = choose(int(r["item"]), key["items"][r["item"]]["response_1"])
            w.writerow(r)
    return dest


def test_human_eval_export_and_score(greedy_run, beam_run, tmp_path):
    from cldg.metrics.stats import cohens_kappa
    from cldg.tools.human_eval import export_sheets, score_sheets

    out = export_sheets(greedy_run.path, beam_run.path, 6, tmp_path / "he", seed=3)
    rows = list(csv.DictReader(open(out["sheet"], encoding="utf-8")))
    key = json.loads(open(out["key"]).read())
    assert len(rows) == out["items"] == 6 and all(r["preference"] == "" for r in rows)
    text = open(out["sheet"], encoding="utf-8").read()
    assert greedy_run.fingerprint not in text and beam_run.fingerprint not in text  # blind: no system named
    assert {k["response_1"] for k in key["items"].values()} == {"A", "B"}  # the order is randomised
    assert set(rows[0]) == {"item", "context", "response 1", "response 2", "preference"}
    greedy = {g["pair_id"]: g["generated"] for g in read_generations(greedy_run)}
    for r in rows:  # the key says which response is system A (greedy)
        k = key["items"][r["item"]]
        a_text = r["response 1"] if k["response_1"] == "A" else r["response 2"]
        assert a_text == greedy[k["pair_id"]]
    # annotator 1 always prefers A; annotator 2 prefers A on items 1-3, B on 4-5, tie on 6
    first = lambda sys: "1" if sys == "A" else "2"  # noqa: E731
    second = lambda sys: "2" if sys == "A" else "1"  # noqa: E731
    s1 = fill(out["sheet"], tmp_path / "ann1.csv", key, lambda i, s: first(s))
    s2 = fill(out["sheet"], tmp_path / "ann2.csv", key, lambda i, s: first(s) if i <= 3 else (second(s) if i <= 5 else "tie"))
    result = score_sheets([s1, s2], tmp_path / "he" / "key.json", as_json=True)
    assert result["per_annotator"][str(s1)] == {"win": 1.0, "loss": 0.0, "tie": 0.0, "items": 6}
    assert result["per_annotator"][str(s2)]["win"] == pytest.approx(3 / 6)
    assert result["per_annotator"][str(s2)]["loss"] == pytest.approx(2 / 6)
    kappa = result["kappa"][f"{s1} vs {s2}"]
    assert kappa == pytest.approx(cohens_kappa(["A"] * 6, ["A"] * 3 + ["B"] * 2 + ["tie"]))
    # majority of two: agreement gives the label, disagreement a tie
    assert result["overall"]["win"] == pytest.approx(3 / 6) and result["overall"]["tie"] == pytest.approx(3 / 6)


def test_human_eval_malformed_sheets(greedy_run, beam_run, tmp_path):
    from cldg.tools.human_eval import export_sheets, score_sheets

    out = export_sheets(greedy_run.path, beam_run.path, 4, tmp_path / "he", seed=1)
    key = json.loads(open(out["key"]).read())
    bad = fill(out["sheet"], tmp_path / "bad.csv", key, lambda i, s: "maybe" if i == 2 else "tie")
    with pytest.raises(CldgError, match=r"bad\.csv:3: preference 'maybe'"):
        score_sheets([bad], out["key"], True)
    blank = fill(out["sheet"], tmp_path / "blank.csv", key, lambda i, s: "" if i == 4 else "1")
    with pytest.raises(CldgError, match=r"blank\.csv:5:"):
        score_sheets([blank], out["key"], True)
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("1,ctx,a,b,1\n")
    with pytest.raises(CldgError, match=r"nohead\.csv:1: header"):
        score_sheets([nohead], out["key"], True)
    dup = tmp_path / "dup.csv"
    dup.write_text("item,preference\n1,1\n1,2\n")
    with pytest.raises(CldgError, match=r"dup\.csv:3: item 1 appears twice"):
        score_sheets([dup], out["key"], True)
    with pytest.raises(CldgError, match="cannot read the key"):
        score_sheets([dup], tmp_path / "missing.json", True)
    with pytest.raises(CldgError, match="at least one item"):
        export_sheets(greedy_run.path, beam_run.path, 0, tmp_path / "x", seed=1)


def test_human_eval_export_keeps_a_key_in_use_and_score_rejects_another_keys_sheet(greedy_run, beam_run, tmp_path):
    """Exporting again into a folder that holds another export's key stops (sheets handed out against it would
    score against the new key without a word); the same export again keeps the sheet; a sheet scored against
    another key is one line naming its row; a sheet with fewer items counts its own items."""
    from cldg.tools.human_eval import export_sheets, score_sheets

    out = export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "he", seed=3)
    key = json.loads(open(out["key"]).read())
    filled = fill(out["sheet"], tmp_path / "he" / "sheet.csv", key, lambda i, s: "1")  # filled in place
    before = open(filled, encoding="utf-8").read()
    assert export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "he", seed=3) == out  # a rerun: kept
    assert open(filled, encoding="utf-8").read() == before
    with pytest.raises(CldgError, match=r"already holds sheet\.csv and key\.json of another export.*--force"):
        export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "he", seed=14)
    assert json.loads(open(out["key"]).read()) == key
    other = export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "he14", seed=14)
    with pytest.raises(CldgError, match=r"sheet\.csv:2: item 1's context is not the key's"):
        score_sheets([filled], other["key"], True)
    export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "he", seed=14, force=True)
    assert json.loads(open(out["key"]).read()) != key
    (tmp_path / "afile").write_text("x")
    with pytest.raises(CldgError, match="afile: is a file"):
        export_sheets(greedy_run.path, beam_run.path, 5, tmp_path / "afile", seed=3)

    # two annotators, one of whom filled 3 of the 5 items: each is scored on their own items
    key = json.loads(open(other["key"]).read())
    full = fill(other["sheet"], tmp_path / "full.csv", key, lambda i, s: "1" if s == "A" else "2")  # always A
    rows = list(csv.DictReader(open(other["sheet"], encoding="utf-8")))[:3]
    short = tmp_path / "short.csv"
    with open(short, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "preference": "tie"} for r in rows)
    result = score_sheets([full, short], other["key"], True)
    assert result["per_annotator"][str(full)]["items"] == 5 and result["per_annotator"][str(short)]["items"] == 3
    assert result["overall"]["items"] == 3


# ---------------------------------------------------------------- readable text, --input

def test_generations_are_detokenized_and_keep_their_tokens(greedy_run, model_workdir):
    from cldg.text.tokenizer import DialogueTokenizer

    _, _, prepared = model_workdir
    tok = DialogueTokenizer.load(prepared.file("tokenizer.json"))
    gens = read_generations(greedy_run)
    for g in gens:
        assert g["generated"] == tok.detokenize(g["generated_tokens"])
        assert tok.words(g["generated"]) == g["generated_tokens"]  # the text reads back as the scored tokens
        assert " ' " not in g["generated"] and " ," not in g["generated"]


def test_detokenize_rules():
    from cldg.text.detok import detokenize

    cases = {"i ' m fine , thanks !": "i'm fine, thanks!", "don ' t you think so ?": "don't you think so?",
             "a well - known place ( in paris ) .": "a well-known place (in paris).",
             "what ? !": "what? !", "i paid $ 5": "i paid $5", "' hello ' she said": "' hello ' she said",
             "you ' re the best :)": "you're the best :)", "hmm ...": "hmm...", "": ""}
    for tokens, text in cases.items():
        assert detokenize(tokens.split()) == text


def test_sacrebleu_on_detokenized_text_does_not_warn(caplog):
    from cldg.metrics.bleu import sacrebleu_corpus
    from cldg.text.detok import detokenize

    hyps = [["i", "'", "m", "fine", ",", "thanks", "!"]] * 5
    refs = [["i", "'", "m", "fine", ",", "thank", "you", "!"]] * 5
    with caplog.at_level("WARNING"):
        score = sacrebleu_corpus(hyps, refs, detokenize)
    assert 0 < score < 100
    assert "detokenize" not in caplog.text


def test_evaluate_on_another_corpus_file(model_workdir, tmp_path):
    from cldg.stages import evaluate as ev

    workdir, _, _ = model_workdir
    corpus = tmp_path / "other.txt"  # DailyDialog's native format, with a word the model never saw
    corpus.write_text("hello there __eou__ hi , how are you ? __eou__ zyzzyva is my favourite word __eou__\n"
                      "do you like pizza ? __eou__ yes i do __eou__\n")
    cfg = ev.Config(model="reference", max_len=8, batch_size=4, input=corpus, input_format="dailydialog")
    art = ev.run(cfg, CommonOptions(workdir=workdir, seed=5, device="cpu"))
    gens = read_generations(art)
    assert [g["reference"] for g in gens] == ["hi , how are you ?", "zyzzyva is my favourite word", "yes i do"]
    assert [g["context"] for g in gens][1] == ["hello there", "hi , how are you ?"]
    metrics = json.loads(art.file("metrics.json").read_text())
    assert metrics["split"] == "input" and metrics["responses"] == 3
    assert 0 < metrics["oov_rate_reference"] < 1  # "zyzzyva" at least is unknown
    oov = f"{100 * metrics['oov_rate_reference']:.1f}% of the human responses'"
    assert oov in art.file("report.md").read_text()  # shown, not only in metrics.json
    with pytest.raises(CldgError, match="no such file"):
        ev.run(ev.Config(model="reference", input=tmp_path / "missing.txt"),
               CommonOptions(workdir=workdir, seed=5, device="cpu"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["a", "b"]}\n{not json\n')
    with pytest.raises(CldgError, match="bad.jsonl:2"):
        ev.run(ev.Config(model="reference", input=bad), CommonOptions(workdir=workdir, seed=5, device="cpu"))


def test_evaluate_scores_a_training_in_progress_by_its_best_checkpoint(prepared_workdir, tmp_path, monkeypatch):
    """`cldg evaluate --model WORKDIR/reference/FP.partial` while training goes on (here: stopped by Ctrl-C after
    its third check): the best checkpoint so far, named reference@STEP; its perplexity of the valid split is the
    one that check measured. Chat and compare do not take it; a partial without a best checkpoint says so."""
    import math
    import shutil

    from typer.testing import CliRunner

    from cldg.cli import app
    from cldg.training.trainer import Trainer

    _, prepared = prepared_workdir
    real_check, checks = Trainer._check, []

    def check_then_ctrl_c(self):
        stop = real_check(self)
        checks.append(self.state["step"])
        if len(checks) == 3:
            raise KeyboardInterrupt
        return stop

    monkeypatch.setattr(Trainer, "_check", check_then_ctrl_c)
    runner = CliRunner()
    res = runner.invoke(app, ["pretrain", "--workdir", str(tmp_path), "--prepare-dir", str(prepared.path),
                              "--embedding-dim", "16", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "16",
                              "--epochs", "3", "--lr", "3e-3", "--device", "cpu", "--seed", "1"])
    assert res.exit_code == 130, res.output
    monkeypatch.undo()
    (partial,) = (tmp_path / "reference").glob("*.partial")
    log = [json.loads(line) for line in (partial / "train-log.jsonl").read_text().splitlines()]
    valid = [r for r in log if r["type"] == "valid"]
    assert len(valid) == 3
    best = min(valid, key=lambda r: r["criterion"])

    res = runner.invoke(app, ["status", str(tmp_path), "--long"], env={"COLUMNS": "250"})
    assert f"score it  cldg evaluate --model {partial}" in res.output and f"step {best['step']:,})" in res.output
    res = runner.invoke(app, ["evaluate", "--workdir", str(tmp_path), "--model", str(partial), "--split", "valid",
                              "--max-len", "10", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert metrics["model"] == f"reference@{best['step']}"
    assert metrics["reference_ppl"] == pytest.approx(math.exp(best["criterion"]), rel=1e-4)
    (art,) = [p for p in (tmp_path / "eval").iterdir() if (p / "manifest.json").is_file() and not p.is_symlink()]
    manifest = json.loads((art / "manifest.json").read_text())
    assert "model" not in manifest["inputs"] and manifest["config"]["model_sha256"] == metrics["model_fingerprint"]

    # not taken where a finished model is needed
    res = runner.invoke(app, ["chat", str(partial), "--workdir", str(tmp_path)], input="")
    assert res.exit_code == 2 and "still in progress" in res.output
    # a best checkpoint that does not match its record (rewritten by hand, or mid-write for ever) is refused
    broken = tmp_path / "reference" / "broken.partial"
    shutil.copytree(partial, broken)
    (broken / "resume" / "best.safetensors").write_bytes((broken / "resume" / "best.safetensors").read_bytes() + b" ")
    res = runner.invoke(app, ["evaluate", "--workdir", str(tmp_path), "--model", str(broken), "--device", "cpu"])
    assert res.exit_code == 2 and "disagree" in res.output and "Traceback" not in res.output
    (broken / "resume" / "best.json").unlink()
    res = runner.invoke(app, ["evaluate", "--workdir", str(tmp_path), "--model", str(broken), "--device", "cpu"])
    assert res.exit_code == 2 and "no best checkpoint yet" in res.output


def test_checkpoints_are_described_only_when_they_are_the_model_the_stage_saves(tmp_path):
    """resume/model.json is written for a registry model whose recipe saves it as trained, not for one whose
    `finish` makes another model of it (MMI's backward model joined to its forward one)."""
    import hashlib

    import torch
    from test_models import FunctionRecipe, batch_of, random_pairs, tiny

    from cldg.text.tokenizer import PAD
    from cldg.training.losses import nll_loss
    from cldg.training.options import TrainOptions
    from cldg.training.trainer import Trainer

    batch = batch_of(random_pairs(4, seed=1))

    def run(run_dir, is_model):
        recipe = FunctionRecipe(lambda epoch, start: [batch][start:],
                                lambda m, b, step: (nll_loss(m(b), b.response_out, PAD)[0], {}),
                                lambda m: {"criterion": nll_loss(m(batch), batch.response_out, PAD)[0].item()}, 1)
        if not is_model:
            recipe.checkpoint_is_model = False
        Trainer(tiny("seq2seq", seed=0), TrainOptions(lr=1e-2, epochs=1), run_dir, torch.device("cpu"), recipe).fit()
        return run_dir / "resume"

    described = run(tmp_path / "a", True)
    assert json.loads((described / "model.json").read_text())["name"] == "seq2seq"
    best = json.loads((described / "best.json").read_text())
    assert best["step"] == 1
    assert best["sha256"] == hashlib.sha256((described / "best.safetensors").read_bytes()).hexdigest()
    assert not (run(tmp_path / "b", False) / "model.json").exists()

    # a resumed run whose best.json names other weights (an older cldg saved its best) describes it again
    (described / "best.json").write_text(json.dumps(best | {"sha256": "0" * 64}))
    (described / "model.json").unlink()
    run(tmp_path / "a", True)
    assert json.loads((described / "best.json").read_text())["sha256"] == best["sha256"]
    assert (described / "model.json").is_file()

    # a training that fails before its first check writes nothing to describe (its .partial can be dropped)
    def failing(run_dir):
        recipe = FunctionRecipe(lambda epoch, start: [batch][start:], lambda m, b, step: 1 / 0, lambda m: {}, 1)
        Trainer(tiny("seq2seq", seed=0), TrainOptions(lr=1e-2, epochs=1), run_dir, torch.device("cpu"), recipe).fit()

    with pytest.raises(ZeroDivisionError):
        failing(tmp_path / "c")
    assert not (tmp_path / "c" / "resume").exists()


def test_temperature_shapes_sampling(model_workdir, greedy_run):
    """--temperature reaches the sampler: near 0, top-k sampling is the greedy search; at 2 it is not."""
    workdir = model_workdir[0]
    greedy = [g["generated"] for g in read_generations(greedy_run)]
    cold = evaluate(workdir, decoding="topk", top_k=50, temperature=1e-5)
    hot = evaluate(workdir, decoding="topk", top_k=50, temperature=2.0)
    assert [g["generated"] for g in read_generations(cold)] == greedy
    assert [g["generated"] for g in read_generations(hot)] != greedy
    assert cold.config["temperature"] == 1e-5


def test_compare_command_prints_json_on_stdout_and_writes_files_where_told(greedy_run, beam_run, model_workdir,
                                                                          tmp_path):
    from typer.testing import CliRunner

    from cldg.cli import app
    from cldg.tools.compare import compare_runs

    runs = [str(greedy_run.path), str(beam_run.path)]
    result = CliRunner().invoke(app, ["compare", *runs, "--workdir", str(model_workdir[0]), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)  # nothing but the JSON on stdout
    want = compare_runs(runs, model_workdir[0], None, as_json=True)
    assert printed["differences"][0]["metrics"]["dist2"] == pytest.approx(want["differences"][0]["metrics"]["dist2"])
    out = tmp_path / "cmp-cli"
    result = CliRunner().invoke(app, ["compare", *runs, "--workdir", str(model_workdir[0]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "comparison.json").read_text())["runs"][1]["path"] == runs[1]
    assert (out / "comparison.md").is_file() and (out / "comparison.png").stat().st_size > 1000


def test_min_len_and_max_len_bound_every_reply(model_workdir):
    gens = read_generations(evaluate(model_workdir[0], decoding="greedy", min_len=5, max_len=7))
    assert all(isinstance(g["generated_tokens"], list) for g in gens)
    lengths = [len(g["generated_tokens"]) for g in gens]
    assert lengths and all(5 <= n <= 7 for n in lengths), lengths
