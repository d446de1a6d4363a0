"""End-to-end checks of a running `ferrum serve` with the official `openai` Python client.

Needs the real default model (SmolLM2-135M-Instruct Q4_1) behind the server:

    ferrum serve &                                   # listens on 127.0.0.1:8080
    FERRUM_URL=http://127.0.0.1:8080 pytest crates/ferrum-server/tests/python/test_openai_client.py

Environment: FERRUM_URL (required; the tests are skipped without it), FERRUM_API_KEY (when the
server has --api-key), FERRUM_GOLDEN (golden llama.cpp outputs, default
shared/golden/smollm2-135m.json from the repository root). Greedy text is compared with the
golden outputs under the golden file's own tolerance (>= 80% of cases identical).
"""

import json
import math
import os
import pathlib

import pytest

openai = pytest.importorskip("openai")

URL = os.environ.get("FERRUM_URL")
pytestmark = pytest.mark.skipif(not URL, reason="set FERRUM_URL to a running ferrum server")

REPO = pathlib.Path(__file__).resolve().parents[4]
GOLDEN = pathlib.Path(os.environ.get("FERRUM_GOLDEN", REPO / "shared/golden/smollm2-135m.json"))


@pytest.fixture(scope="module")
def client():
    return openai.OpenAI(
        base_url=URL.rstrip("/") + "/v1",
        api_key=os.environ.get("FERRUM_API_KEY", "none"),
        max_retries=0,
        timeout=120,
    )


@pytest.fixture(scope="module")
def model(client):
    models = client.models.list().data
    assert len(models) == 1
    return models[0].id


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.exists():
        pytest.fail(f"golden file not found at {GOLDEN}; set FERRUM_GOLDEN")
    return json.loads(GOLDEN.read_text())


def check_usage(usage, max_tokens, finish):
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= max_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert usage.completion_tokens == max_tokens
    details = usage.prompt_tokens_details
    assert details is not None and 0 <= details.cached_tokens <= usage.prompt_tokens


def chat_messages():
    return [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_models_lists_the_served_model(client, model):
    assert client.models.retrieve(model).id == model


def test_chat_non_streaming(client, model):
    r = client.chat.completions.create(
        model=model, messages=chat_messages(), max_tokens=32, temperature=0
    )
    c = r.choices[0]
    assert r.object == "chat.completion"
    assert c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    assert "Paris" in c.message.content
    check_usage(r.usage, 32, c.finish_reason)


def test_chat_streaming_equals_non_streaming(client, model):
    plain = client.chat.completions.create(
        model=model, messages=chat_messages(), max_tokens=24, temperature=0
    )
    stream = client.chat.completions.create(
        model=model,
        messages=chat_messages(),
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    assert roles == ["assistant"]
    assert text == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage is not None
    assert usage.prompt_tokens == plain.usage.prompt_tokens
    assert usage.completion_tokens == plain.usage.completion_tokens


def test_completion_streaming_and_not(client, model):
    prompt = "Once upon a time, in a land far away,"
    plain = client.completions.create(model=model, prompt=prompt, max_tokens=20, temperature=0)
    assert plain.object == "text_completion"
    check_usage(plain.usage, 20, plain.choices[0].finish_reason)
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=model, prompt=prompt, max_tokens=20, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == plain.choices[0].text
    assert len(streamed) > 0


def test_finish_reasons_length_and_stop(client, model):
    prompt = "The quick brown fox jumps over the lazy dog."
    r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 1
    full = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    text = full.choices[0].text
    words = [w for w in text.split() if len(w) >= 3]
    assert words, f"need a word to stop at in {text!r}"
    stop = words[len(words) // 2]
    cut = client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_chat_logprobs(client, model):
    r = client.chat.completions.create(
        model=model,
        messages=chat_messages(),
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        assert e.logprob <= 0
        assert len(e.top_logprobs) == 3
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(e.logprob, lps[0], abs_tol=1e-3)
    joined = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    # The last token may be a stop token that adds no text.
    assert joined.startswith(r.choices[0].message.content)


def test_completion_logprobs(client, model):
    r = client.completions.create(
        model=model, prompt="def fibonacci(n):", max_tokens=6, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)


def test_n_choices(client, model):
    r = client.chat.completions.create(
        model=model, messages=chat_messages(), max_tokens=8, temperature=0, n=2
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content


def test_repeated_prompt_hits_the_prefix_cache(client, model):
    long = "Summarize: " + " ".join(f"item {i} is a line of a long shared prefix." for i in range(30))
    client.completions.create(model=model, prompt=long, max_tokens=2, temperature=0)
    r = client.completions.create(model=model, prompt=long, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens // 2


def test_errors_map_to_client_exceptions(client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=chat_messages())
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=chat_messages(), temperature=7)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt="x " * 100_000, max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_greedy_text_matches_golden_outputs(client, model, golden):
    cases = golden["cases"]
    same, report = 0, []
    for case in cases:
        if case["kind"] == "chat":
            r = client.chat.completions.create(
                model=model, messages=case["messages"], max_tokens=32, temperature=0
            )
            got = r.choices[0].message.content
        else:
            # Token ids avoid any BOS / tokenization difference: the prompt is exactly golden's.
            r = client.completions.create(
                model=model, prompt=case["tokens"], max_tokens=32, temperature=0
            )
            got = r.choices[0].text
        if got == case["greedy_text"]:
            same += 1
        else:
            report.append((case.get("text") or case["messages"], case["greedy_text"], got))
    assert same >= math.ceil(0.8 * len(cases)), f"{same}/{len(cases)} identical; diffs: {report}"


def test_first_token_logprobs_match_golden(client, model, golden):
    for case in [c for c in golden["cases"] if c["kind"] == "text"][:5]:
        r = client.completions.create(
            model=model, prompt=case["tokens"], max_tokens=1, temperature=0, logprobs=5
        )
        lp = r.choices[0].logprobs
        top1 = case["top5"][0]
        second = case["top5"][1]
        if top1["logit"] - second["logit"] > 0.25:
            assert abs(lp.token_logprobs[0] - top1["logprob"]) < 0.25, (case["text"], lp)
