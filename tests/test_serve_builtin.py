"""The built-in OpenAI-compatible server on loopback, driven by the official `openai` client.

A tiny Llama (random weights from tests/fixtures/serve_tiny_config.json, seed 0) with a byte-level
tokenizer (tests/fixtures/serve_tokenizer) and a LoRA adapter made here with peft. Expected texts
come from transformers' own `generate` on an identically built model, so the server is checked
against an independent implementation, not against itself.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from swiftplan.executors.serve.app import make_app  # noqa: E402
from swiftplan.executors.serve.engine import Engine  # noqa: E402
from swiftplan.executors.serve.loading import LoadedModel, load_model  # noqa: E402
from swiftplan.executors.serve.report import Prediction, Reporter  # noqa: E402
from swiftplan.executors.serve.server import serve_in_thread  # noqa: E402

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
CONFIG = FIXTURES / "serve_tiny_config.json"
TOKENIZER = FIXTURES / "serve_tokenizer"
KEY = "sk-local-test"
CONTEXT = 128


def _base_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)  # what load_model(random_init=..., seed=0) does
    config = AutoConfig.for_model(**json.loads(CONFIG.read_text()))
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A LoRA adapter with non-zero B (so it changes the output), saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(_base_model(), lora).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(adapter_dir):
    """Greedy text from transformers' generate: reference(prompt_ids, n, adapter=False)."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    models = {False: _base_model(), True: PeftModel.from_pretrained(_base_model(), adapter_dir).eval()}

    def generate(prompt_ids: list[int], max_tokens: int, adapter: bool = False) -> str:
        with torch.inference_mode():
            out = models[adapter].generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=max_tokens,
                                           do_sample=False, pad_token_id=0)  # fmt: skip
        return tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)

    generate.tokenizer = tokenizer  # type: ignore[attr-defined]
    return generate


@pytest.fixture(scope="module")
def server(adapter_dir, tmp_path_factory):
    loaded = load_model(source=None, random_init=str(CONFIG), tokenizer=str(TOKENIZER), dtype="fp32", device="cpu",
                        adapters={"sql": str(adapter_dir)})  # fmt: skip
    engine = Engine(loaded, served_name="tiny", context=CONTEXT, max_slots=4)
    engine.start()
    with serve_in_thread(make_app(engine, api_key=KEY)) as url:
        yield url, engine
    engine.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _complete(client, prompt: str, model: str = "tiny", **kw):
    return client.completions.create(
        model=model, prompt=prompt, max_tokens=kw.pop("max_tokens", 8), temperature=0, **kw
    )


def test_models_lists_base_and_adapter(client):
    assert [m.id for m in client.models.list().data] == ["tiny", "sql"]


def test_completion_matches_transformers_generate(client, reference):
    result = _complete(client, "Hello, how are", max_tokens=12)
    ids = reference.tokenizer("Hello, how are")["input_ids"]
    assert result.choices[0].text == reference(ids, 12)
    assert result.usage.prompt_tokens == len(ids)
    assert result.usage.completion_tokens == 12 and result.choices[0].finish_reason == "length"


def test_chat_uses_the_chat_template(client, reference):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    result = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    text = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = reference.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == reference(ids, 10)
    assert result.usage.prompt_tokens == len(ids)


def test_adapter_is_selected_by_model_name(client, reference):
    ids = reference.tokenizer("The quick brown")["input_ids"]
    with_adapter = _complete(client, "The quick brown", model="sql", max_tokens=10).choices[0].text
    assert with_adapter == reference(ids, 10, adapter=True)
    assert with_adapter != _complete(client, "The quick brown", max_tokens=10).choices[0].text


def test_streaming_completion_adds_up_to_the_plain_answer(client):
    plain = _complete(client, "Once upon a time", max_tokens=16)
    chunks = list(
        _complete(
            client, "Once upon a time", max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and not chunks[-1].choices


def test_streaming_chat_sends_role_then_content(client):
    messages = [{"role": "user", "content": "Hi"}]
    plain = client.chat.completions.create(model="sql", messages=messages, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="sql", messages=messages, max_tokens=12, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_raw_stream_is_openai_server_sent_events(server):
    url, _ = server
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][len("data: ") :])
    assert first["object"] == "text_completion" and first["choices"][0]["index"] == 0


def test_stop_string_ends_the_text(client):
    full = _complete(client, "A planner sizes", max_tokens=16).choices[0].text
    cut = next(i for i in range(3, len(full)) if full[i] != "\ufffd" and not full[i].isspace())
    stop = full[cut : cut + 2]
    result = _complete(client, "A planner sizes", max_tokens=16, stop=[stop])
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].text == full[: full.index(stop)]
    streamed = _complete(client, "A planner sizes", max_tokens=16, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        return client.completions.create(model="tiny", prompt="Serving a", max_tokens=12, temperature=1.0, top_p=0.9,
                                         seed=seed).choices[0].text  # fmt: skip

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_sixteen_clients_get_their_single_client_answers(server, client):
    url, engine = server
    prompts = [
        ("tiny", "Hello, how are"),
        ("sql", "The quick brown"),
        ("tiny", "A planner"),
        ("sql", "Once upon"),
    ]
    expected = {p: _complete(client, p[1], model=p[0], max_tokens=10).choices[0].text for p in prompts}

    def one_client(index: int) -> list[tuple[tuple[str, str], str]]:
        own = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        results = []
        for request in range(4):
            prompt = prompts[(index + request) % len(prompts)]
            if (index + request) % 3 == 0:
                stream = _complete(own, prompt[1], model=prompt[0], max_tokens=10, stream=True)
                text = "".join(c.choices[0].text for c in stream)
            else:
                text = _complete(own, prompt[1], model=prompt[0], max_tokens=10).choices[0].text
            results.append((prompt, text))
        return results

    before = engine.stats.snapshot()["requests"]
    with ThreadPoolExecutor(16) as pool:
        outcomes = [f.result(timeout=120) for f in [pool.submit(one_client, i) for i in range(16)]]
    answers = [pair for outcome in outcomes for pair in outcome]
    assert len(answers) == 64
    assert all(text == expected[prompt] for prompt, text in answers)
    assert engine.stats.snapshot()["requests"] - before == 64


# --- errors: each gets its status and OpenAI's error body, and the server keeps serving ----------


def _post(url: str, path: str, body, *, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(
        url + path, content=content, headers=headers | {"Content-Type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize(
    ("body", "key", "status", "param"),
    [
        ('{"model": "tiny", "prompt": "Hi", ', KEY, 400, None),  # malformed JSON
        ({"model": "tiny", "prompt": "Hi"}, None, 401, None),
        ({"model": "tiny", "prompt": "Hi"}, "wrong", 401, None),
        ({"model": "nope", "prompt": "Hi"}, KEY, 404, "model"),
        ({"model": "tiny", "prompt": "Hello world " * 60}, KEY, 400, "prompt"),  # longer than the context
        ({"model": "tiny", "prompt": "Hi", "max_tokens": 0}, KEY, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "Hi", "max_tokens": -3}, KEY, 400, "max_tokens"),
        ({"model": "tiny", "prompt": "Hi", "max_tokens": CONTEXT}, KEY, 400, "max_tokens"),  # prompt + max_tokens > context
        ({"model": "tiny", "prompt": "Hi", "n": 2}, KEY, 400, "n"),
        ({"model": "tiny", "prompt": "Hi", "temperature": 5}, KEY, 400, "temperature"),
        ({"model": "tiny", "prompt": [1, 2, 99999]}, KEY, 400, "prompt"),
        ({"model": "tiny"}, KEY, 400, "prompt"),
    ],
    ids=["malformed-json", "no-key", "wrong-key", "unknown-model", "prompt-too-long", "max-tokens-0",
         "max-tokens-negative", "over-context", "n-2", "temperature-5", "bad-token-id", "no-prompt"],
)  # fmt: skip
def test_bad_requests_get_openai_errors(server, body, key, status, param):
    url, _ = server
    response = _post(url, "/v1/completions", body, key=key)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    assert (
        _post(url, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2}).status_code == 200
    )


def test_openai_client_raises_the_matching_errors(server, client):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        _complete(client, "Hi", model="missing")
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x " * 200}], max_tokens=4
        )


def test_health_and_metrics_need_no_key(server, client):
    url, _ = server
    _complete(client, "Hi", max_tokens=3)
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    text = httpx.get(url + "/metrics").text
    assert "# TYPE swiftplan_requests_total counter" in text
    values = dict(line.split(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert (
        int(values["swiftplan_requests_total"]) >= 1 and int(values["swiftplan_generation_tokens_total"]) >= 3
    )
    snapshot = httpx.get(url + "/metrics", headers={"Accept": "application/json"}).json()
    assert snapshot["tokens_per_s"] > 0 and snapshot["ttft_s"]["mean"] > 0


# --- disconnects free the slot; the report compares with the plan ---------------------------------


class _SlowModel:
    """The model, 20 ms slower per forward pass, so a request is still running when its client leaves."""

    def __init__(self, model) -> None:
        self._model = model

    def __call__(self, *args, **kwargs):
        time.sleep(0.02)
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def _wait_for(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_frees_its_slot(tmp_path):
    base = load_model(
        source=None,
        random_init=str(CONFIG),
        tokenizer=str(TOKENIZER),
        dtype="fp32",
        device="cpu",
        adapters={},
    )
    slow = LoadedModel(
        model=_SlowModel(base.model), tokenizer=base.tokenizer, device="cpu", adapters=(), max_positions=256
    )
    engine = Engine(slow, served_name="tiny", context=CONTEXT, max_slots=1)
    reporter = Reporter(engine.stats, Prediction(ttft_s=0.5, per_user_decode_tokens_per_s=40.0, tokens_per_s=40.0),
                        context={"engine": "builtin"}, report_dir=tmp_path, every=0, log=lambda _: None)  # fmt: skip
    engine.start()
    try:
        with serve_in_thread(make_app(engine)) as url:
            body = {"model": "tiny", "prompt": "Hello", "max_tokens": 100, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
                next(response.iter_lines())  # the first chunk arrived: generation is under way
            assert _wait_for(lambda: engine.stats.snapshot()["aborted"] == 1 and engine.stats.running == 0)
            with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
                httpx.post(url + "/v1/completions", json=body | {"stream": False}, timeout=0.5)
            assert _wait_for(lambda: engine.stats.snapshot()["aborted"] == 2 and engine.stats.running == 0)
            # the single slot is free again: a new request is served at once
            result = httpx.post(
                url + "/v1/completions", json=body | {"stream": False, "max_tokens": 3}, timeout=30
            )
            assert result.json()["usage"]["completion_tokens"] == 3
    finally:
        engine.stop()
    report = reporter.emit(final=True)
    written = json.loads((tmp_path / "serve_report.json").read_text())
    assert written["final"] is True and written["measured"]["requests"] == 3
    assert written["predicted"]["ttft_s"] == 0.5
    assert report["measured_over_predicted"]["ttft_s"] == pytest.approx(
        report["measured"]["ttft_s"]["mean"] / 0.5
    )
    assert written["measured"]["memory_kind"] == "unknown"  # no memory probe given to this engine's stats
