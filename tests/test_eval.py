"""`wb eval`: metrics and answer extraction, the shipped evaluation sets, outputs, reproducibility (the same
command twice, any batch size), an endpoint scored as the local model, several models in one table,
eval after training, and one-line errors."""
import contextlib
import json

import pytest

import swiftlike as wb
from swiftlike.cli.main import main
from swiftlike.eval.metrics import METRICS, extract_choice, rouge_l, token_f1
from swiftlike.eval.run import mean_and_stderr

IDENTITY = "examples/data/identity.jsonl"


# -- metrics -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("answer, reference, correct", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "... #### 72", True),
    ("The answer is \\boxed{72}.", "She sold 72 clips.\n#### 72", True),
    ("So she has 1,234 dollars left.", "#### 1234", True),
    ("It costs $18.00", "#### 18", True),
    ("3/4 of them", "#### 0.75", True),
    ("The answer is 71", "#### 72", False),
    ("I do not know", "#### 72", False),
    # each scored 0 once: a dollar sign escaped in LaTeX, units, a percentage against GSM8K's bare number, and a
    # reference in words
    ("So the total is \\boxed{\\$18}.", "#### 18", True), ("\\boxed{18 \\text{ dollars}}", "#### 18", True),
    ("#### 18 dollars", "#### 18", True), ("\\boxed{60\\%}", "#### 60", True), ("60%", "#### 0.6", True),
    ("6%", "#### 60", False), ("18", "She has 18 apples left.", True), ("17", "She has 18 apples left.", False),
])
def test_math_extracts_the_final_answer_and_compares_numbers(answer, reference, correct):
    metric = METRICS["math"]
    assert metric.score(metric.extract(answer), reference) == float(correct)


@pytest.mark.parametrize("answer, letter", [
    ("C", "C"), ("C.", "C"), ("(B)", "B"), ("b) because", "B"), ("ANSWER: D", "D"), ("The answer is (A).", "A"),
    ("<think>A or B?</think> The correct option is B", "B"), ("**Answer: C**", "C"), ("I am not sure", None),
    ("Answer: A\nActually, the answer is D", "D"),
    # an explanation after the answer, and the words "a" and "I", are not the pick (each was once)
    ("Answer: B\n\nExplanation: option A is wrong because it ignores friction.", "B"),
    ("The answer is B. Choice A confuses mass and weight.", "B"), ("ANSWER: C\nOption D is also plausible", "C"),
    ("The answer is a tricky one, but it is (C).", "C"), ("The best choice I can see is B", "B"),
    ("I think it's B.", "B"), ("<think>the answer is A</think>B", "B"), ("A. Paris", "A"), ("**B**", "B"),
    ("answer: (d)", "D"), ("The answer is: option C", "C"),
])
def test_choice_letter_extraction(answer, letter):
    assert extract_choice(answer) == letter


def test_choice_scores_against_the_reference_letter():
    metric = METRICS["choice"]
    assert metric.score(metric.extract("The answer is B"), "B") == 1.0
    assert metric.score(metric.extract("The answer is B"), "C") == 0.0
    assert metric.score(metric.extract("no idea"), "C") == 0.0


def test_exact_match_f1_and_rouge_l_by_hand():
    assert METRICS["exact_match"].score("The  Eiffel tower!", "eiffel Tower") == 1.0
    assert METRICS["exact_match"].score("Eiffel", "Eiffel Tower") == 0.0
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    # LCS of "a b c d e" and "a c e f" is "a c e": precision 3/5, recall 3/4
    assert rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / (0.6 + 0.75))
    assert rouge_l("same words", "Same Words") == 1.0 and rouge_l("x", "y") == 0.0


def test_every_metric_the_flags_offer_exists():
    from swiftlike.config import EVAL_METRICS

    assert set(EVAL_METRICS) == set(METRICS) | {"perplexity"}


def test_mean_and_standard_error():
    assert mean_and_stderr([1.0]) == (1.0, 0.0)
    mean, stderr = mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and stderr == pytest.approx((1 / 3) ** 0.5 / 2)


# -- data --------------------------------------------------------------------------------------------------------
def test_shipped_sets_read_as_prompts_with_references():
    from swiftlike.infer.prompts import read_prompts

    gsm = read_prompts(["gsm8k-test"])
    assert len(gsm) == 512 and gsm[0].reference["content"].rstrip().endswith("#### 18")
    mcq = read_prompts(["mcq-demo"])
    assert len(mcq) == 60 and {r.reference["content"] for r in mcq} == set("ABCD")
    first = mcq[0].messages[-1]["content"].splitlines()
    assert first[1:] == ["A. 54", "B. 64", "C. 56", "D. 48", "Answer with the letter of the correct option."]
    assert mcq[0].reference["content"] == "C"


def test_multiple_choice_rows_train_too_and_bad_answers_are_named(tmp_path):
    from swiftlike.data.formats import RowError, to_canonical

    row = to_canonical({"question": "2+2?", "choices": ["3", "4"], "answer": "B"})
    assert row["messages"][-1] == {"role": "assistant", "content": "B"}
    assert to_canonical({"question": "q", "choices": ["x", "y", "z"], "answer": "2"})["messages"][-1]["content"] == "C"
    with pytest.raises(RowError, match="'answer' must be a choice index 0-1 or a letter A-B, got 5"):
        to_canonical({"question": "q", "choices": ["x", "y"], "answer": 5})


# -- the command -------------------------------------------------------------------------------------------------
MINI = ["--model", "Qwen/Qwen3-0.6B", "--miniature"]


def _eval(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["eval", *args, "--output_dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    return out, results


def _predictions(out, label, dataset):
    path = out / "predictions" / label / f"{dataset}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_outputs_are_complete_and_the_batch_size_does_not_change_anything(tmp_path, capsys):
    args = [*MINI, "--eval_dataset", "mcq-demo", "--limit", "12", "--max_new_tokens", "12"]
    out, results = _eval(tmp_path, "b8", *args, "--eval_batch_size", "8")
    task = results["models"][0]["tasks"][0]
    assert task["dataset"] == "mcq-demo" and task["metric"] == "choice" and task["n"] == 12
    assert results["settings"]["limit"] == 12 and results["models"][0]["identity"]["template"] == "qwen3"
    table = capsys.readouterr().out
    assert "mcq-demo (choice)" in table and "(n=12)" in table
    rows = _predictions(out, "Qwen3-0.6B", "mcq-demo")
    assert [r["key"] for r in rows] == [f"mcq-demo:{i}" for i in range(1, 13)]
    assert set(rows[0]) >= {"prompt", "prediction", "extracted", "reference", "score", "correct"}
    out1, again = _eval(tmp_path, "b1", *args, "--eval_batch_size", "1")
    assert again["models"][0]["tasks"] == results["models"][0]["tasks"]
    assert [r["prediction"] for r in _predictions(out1, "Qwen3-0.6B", "mcq-demo")] == [r["prediction"] for r in rows]
    assert len({r["prediction"] for r in rows}) > 1  # the answers differ by row: a real comparison


@pytest.mark.slow
def test_an_endpoint_scores_as_the_local_model(tmp_path):
    """The same miniature behind `wb deploy`'s app (in this process) and evaluated locally: same predictions,
    same score."""
    from swiftlike.infer.engine import TransformersEngine
    from swiftlike.models.resolve import load_for_inference
    from swiftlike.serve import ServeSettings, create_app
    from swiftlike.serve.server import BackgroundServer

    args = ["--eval_dataset", "gsm8k-test", "--limit", "6", "--max_new_tokens", "16"]
    local_out, local = _eval(tmp_path, "local", *MINI, *args)
    model, tokenizer, template = load_for_inference("Qwen/Qwen3-0.6B", miniature=True)
    with TransformersEngine(model, tokenizer, template) as engine:
        app = create_app(engine, ServeSettings(model_name="mini", max_model_len=4096, api_key="sekrit",
                                               max_tokens_limit=64, max_request_bytes=1 << 20))
        with BackgroundServer(app) as server:
            api_out, api = _eval(tmp_path, "api", "--api_url", server.url + "/v1", "--api_key", "sekrit", *args)
            assert main(["eval", "--api_url", server.url + "/v1", "--api_key", "wrong", *args,
                         "--output_dir", str(tmp_path / "x")]) == 2
    assert api["models"][0]["identity"] == {"api_url": server.url + "/v1", "api_model": "mini"}
    assert api["models"][0]["tasks"] == local["models"][0]["tasks"]
    assert [r["prediction"] for r in _predictions(api_out, "mini", "gsm8k-test")] == \
        [r["prediction"] for r in _predictions(local_out, "Qwen3-0.6B", "gsm8k-test")]


@pytest.mark.slow
def test_several_checkpoints_and_their_base_in_one_table_and_eval_after_train(tmp_path, capsys):
    # float32 on any device: the scores of two runs are compared (bf16 on a GPU can flip a greedy near-tie)
    run = wb.sft(model="Qwen/Qwen3-0.6B", miniature=True, dataset=[IDENTITY], lora=True, max_steps=30,
                 output_dir=str(tmp_path / "run"), save_steps=10, eval_after_train=True, report_to="tensorboard",
                 eval_dataset=[f"{IDENTITY}#8"], eval_metric="rouge", eval_max_new_tokens=24, torch_dtype="float32")
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    base, final = (m["tasks"][0]["score"] for m in results["models"])
    assert [m["label"] for m in results["models"]] == ["base", "run/checkpoint-30"]
    assert final > base + 0.15  # the identity answers are being learned (0.30 measured); the base knows none
    assert run.evaluation == {f"eval_base/{IDENTITY}#8/rouge": base, f"eval/{IDENTITY}#8/rouge": final}
    table = capsys.readouterr().out
    assert f"[{final - base:+.4f}]" in table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "runs"))
    events.Reload()
    logged = events.Scalars(f"eval/{IDENTITY}#8/rouge")
    assert [e.step for e in logged] == [30] and logged[0].value == pytest.approx(final)
    # wb eval: two checkpoints and their base, one table
    out, many = _eval(tmp_path, "many", "--adapters", str(tmp_path / "run" / "checkpoint-10"),
                      str(tmp_path / "run" / "checkpoint-30"), "--with_base", "--eval_dataset", f"{IDENTITY}#8",
                      "--metric", "rouge", "--max_new_tokens", "24", "--torch_dtype", "float32")
    assert [m["label"] for m in many["models"]] == ["base", "run/checkpoint-10", "run/checkpoint-30"]
    assert many["models"][0]["tasks"][0]["score"] == pytest.approx(base)
    assert many["models"][2]["tasks"][0]["score"] == pytest.approx(final)


@pytest.mark.slow
def test_perplexity_of_references_and_of_plain_text(tmp_path):
    from swiftlike.data.dataset import encode_rows, load_rows
    from swiftlike.models.perplexity import perplexity
    from swiftlike.models.resolve import load_for_inference

    out, results = _eval(tmp_path, "ppl", *MINI, "--eval_dataset", f"{IDENTITY}", "--metric", "perplexity",
                         "--limit", "5")
    task = results["models"][0]["tasks"][0]
    model, _, template = load_for_inference("Qwen/Qwen3-0.6B", miniature=True)
    encoded, _ = encode_rows(load_rows([IDENTITY])[:5], template, 2048)
    assert task["n"] == 5 and task["score"] == pytest.approx(perplexity(model, encoded), rel=1e-5)
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "The river runs to the sea."}\n{"text": "Mountains stand still."}\n')
    _, plain = _eval(tmp_path, "plain", *MINI, "--eval_dataset", str(text), "--metric", "perplexity")
    assert plain["models"][0]["tasks"][0]["n"] == 2 and plain["models"][0]["tasks"][0]["score"] > 1
    # a prompt over --max_length loses its start, not the row: each row's perplexity stays under its own key (the
    # long row was dropped once, and every row after it reported under the key of the row before)
    rows = tmp_path / "long.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in [
        {"query": "Who are you?", "response": "I am Wren."},
        {"query": "word " * 200, "response": "A long question."},
        {"query": "What is 2+2?", "response": "Four."}]))
    third = tmp_path / "third.jsonl"
    third.write_text(rows.read_text().splitlines()[2] + "\n")
    measured = {}
    for name, data in (("long", rows), ("third", third)):
        out, _ = _eval(tmp_path, name, *MINI, "--eval_dataset", str(data), "--metric", "perplexity",
                       "--max_length", "64")
        (path,) = (out / "predictions").glob("*/*.jsonl")
        measured[name] = [json.loads(line) for line in path.read_text().splitlines()]
    assert [p["key"] for p in measured["long"]] == [f"{rows}:{i}" for i in (1, 2, 3)]
    assert measured["long"][2]["perplexity"] == pytest.approx(measured["third"][0]["perplexity"], rel=1e-6)


@contextlib.contextmanager
def _endpoint(reply):
    """An OpenAI-style endpoint on 127.0.0.1 (yields its /v1 URL) whose every request is answered by
    reply(method) -> (status, body), or (status, body, declared length) to cut a reply short."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, method):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, body, *declared = reply(method)
            self.send_response(status)
            self.send_header("Content-Length", str(declared[0] if declared else len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._answer("GET")

        def do_POST(self):  # noqa: N802
            self._answer("POST")

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def test_an_endpoint_that_is_busy_or_cuts_a_reply_is_asked_again_and_its_reasoning_is_not_scored(tmp_path,
                                                                                                    monkeypatch):
    """A 503, then a reply cut short, then the answer with its reasoning left in `content` (a server without a
    reasoning parser): once a traceback (the cut reply), an abort (the 503), and the reasoning's \\boxed{5}
    scored instead of the answer's 7."""
    from swiftlike.eval import backends

    monkeypatch.setattr(backends, "RETRY_SECONDS", 0.01)
    calls = []
    answer = json.dumps({"choices": [{"message": {"content": "<think>Maybe \\boxed{5}? no.</think>\n\nIt is "
                                                             "\\boxed{7}."}}]}).encode()

    def reply(method):
        calls.append(method)
        if len(calls) == 1:
            return 503, b'{"error": {"message": "busy"}}'
        return (200, answer) if len(calls) > 2 else (200, answer[:10], len(answer))  # the second: cut short

    rows = tmp_path / "q.jsonl"
    rows.write_text(json.dumps({"query": "3+4?", "response": "#### 7"}) + "\n")
    with _endpoint(reply) as url:
        _, results = _eval(tmp_path, "api", "--api_url", url, "--api_model", "m", "--eval_dataset", str(rows),
                           "--metric", "math")
    assert results["models"][0]["tasks"][0]["score"] == 1.0 and len(calls) == 3


def test_an_endpoint_listing_several_models_needs_api_model():
    """A `wb deploy` with adapters lists the base first: scoring it silently (the adapter meant) was the default."""
    from swiftlike.errors import UserError
    from swiftlike.eval.backends import ApiBackend

    listed = []
    with _endpoint(lambda _: (200, json.dumps({"object": "list", "data": [{"id": n} for n in listed]}).encode())
                   ) as url:
        listed[:] = ["base", "a"]
        with pytest.raises(UserError, match=r"/models lists 2 models \(base, a\); give --api_model NAME"):
            ApiBackend(url, None, None, 1)
        assert ApiBackend(url, None, "a", 1).model == "a"
        listed[:] = []
        with pytest.raises(UserError, match="/models lists no model; give --api_model"):
            ApiBackend(url, None, None, 1)
        listed[:] = ["only"]
        assert ApiBackend(url, None, None, 1).model == "only"


def test_a_run_that_stops_early_keeps_the_rows_it_answered(tmp_path, capsys):
    """The endpoint refuses the third request (HTTP 400, not retried): exit 2, and the two rows answered before
    it are kept in <dataset>.partial.jsonl (once: all lost)."""
    calls = []
    answer = json.dumps({"choices": [{"message": {"content": "It is 7."}}]}).encode()

    def reply(method):
        calls.append(method)
        return (200, answer) if len(calls) < 3 else (400, b'{"error": {"message": "too long"}}')

    rows = tmp_path / "q.jsonl"
    rows.write_text("".join(json.dumps({"query": f"{i}+7?", "response": f"#### {i + 7}"}) + "\n" for i in range(4)))
    out = tmp_path / "out"
    with _endpoint(reply) as url:
        assert main(["eval", "--api_url", url, "--api_model", "m", "--eval_dataset", str(rows), "--metric", "math",
                     "--eval_batch_size", "1", "--output_dir", str(out)]) == 2
    (partial,) = (out / "predictions" / "m").glob("*q.partial.jsonl")
    kept = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [(r["key"], r["score"]) for r in kept] == [(f"{rows}:1", 1.0), (f"{rows}:2", 0.0)]
    err = capsys.readouterr().err
    assert f"the 2 rows of {rows} answered so far are in {partial}" in err and "HTTP 400" in err
    assert not list((out / "predictions" / "m").glob("*q.jsonl"))


def test_bad_input_is_one_line(tmp_path, capsys):
    def error(*args):
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    assert "give --eval_dataset" in error(*MINI)
    assert "give --model, --adapters or --api_url" in error("--eval_dataset", "gsm8k-test")
    # argparse's own errors: one line too (once the whole usage block)
    assert "choose from 'math', 'choice', 'exact_match', 'f1', 'rouge', 'perplexity'); see wb eval --help" in \
        error(*MINI, "--eval_dataset", "gsm8k-test", "--metric", "bleu")
    plain = tmp_path / "qa.jsonl"
    plain.write_text('{"query": "2+2?", "response": "4"}\n{"prompt": "no answer here"}\n')
    assert f"--eval_dataset {plain}: give --metric" in error(*MINI, "--eval_dataset", str(plain))
    assert f"{plain}:2: no reference answer" in error(*MINI, "--eval_dataset", str(plain), "--metric", "exact_match")
    assert "does not answer" in error("--api_url", "http://127.0.0.1:9/v1", "--eval_dataset", "gsm8k-test")
    assert "needs the model's probabilities" in error("--api_url", "http://127.0.0.1:9/v1", "--eval_dataset",
                                                      "gsm8k-test", "--metric", "perplexity")
    scope = ["--eval_backend", "evalscope", "--evalscope_python", __import__("sys").executable]
    assert "which this backend does not run" in error(*MINI, "--eval_dataset", "gsm8k-test", *scope)
    assert "cannot import evalscope" in error(*MINI, "--eval_dataset", "mcq-demo", *scope)
    assert "--eval_after_train needs --eval_dataset" in error_train(capsys, "--eval_after_train")
    assert "add --eval_after_train" in error_train(capsys, "--eval_dataset", "gsm8k-test")


def error_train(capsys, *args):
    assert main(["sft", *MINI, "--dataset", IDENTITY, *args]) == 2
    return capsys.readouterr().err.strip()
