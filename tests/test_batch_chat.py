"""[api] mode = "batch-chat": the online pool sending to the Batch Chat API, against the simulator
over loopback (it serves chat/completions at its compatible-mode root), with a real SQLite store.

The `recorder` simulator also keeps the path and body of every POST it gets, so a test can see
exactly what went where; it serves both the native endpoints (an online run) and the
compatible-mode root (a batch-chat run), so one store can switch between the two."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import API_KEY, invoke_cli, query, write_job

from batchrunner import SpecError, load_spec, run_job, wire
from batchrunner.batchmodels import check_batch_model, served_models
from batchrunner.pricing import PriceTable, load_prices
from batchrunner.render import canonical, request_key
from batchrunner.route import (
    BATCH_CHAT_URL_ENV,
    QUEUE_TIMEOUT_S,
    batch_chat_url,
    chat_request,
    check_route,
    read_timeout_s,
    route_of,
)
from batchrunner.service import Service
from batchrunner.simulator import Simulator, ThreadHandle, serve_in_thread
from batchrunner.spec import Limits

ROWS = [{"id": f"r{i}", "text": f"item number {i}"} for i in range(8)]
BATCH_CHAT = {"api": {"mode": "batch-chat"}}
MILLION = 10**6  # pico-USD per token for a price of 1 USD per million tokens
CHAT_PATH = wire.COMPATIBLE_SUFFIX + wire.OPENAI_CHAT_PATH  # where the simulator serves chat/completions


class Recorder(Simulator):
    """The simulator, also keeping (path, JSON body) of every POST it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def app(self) -> web.Application:
        app = super().app()

        @web.middleware
        async def keep(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
            if request.method == "POST":
                self.posts.append((request.path, json.loads(await request.read())))
            return await handler(request)

        app.middlewares.append(keep)
        return app

    def reset(self) -> None:
        super().reset()
        self.posts = []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadHandle]:
    """A Recorder on loopback; DASHSCOPE_BASE_URL and DASHSCOPE_BATCH_CHAT_URL point at it."""
    with serve_in_thread(Recorder(), "127.0.0.1", 0) as handle:
        monkeypatch.setenv("DASHSCOPE_BASE_URL", handle.base_url)
        monkeypatch.setenv(BATCH_CHAT_URL_ENV, handle.compat_base_url)
        monkeypatch.setenv("DASHSCOPE_API_KEY", API_KEY)
        yield handle


def posts(handle: ThreadHandle) -> list[tuple[str, dict[str, Any]]]:
    sim = handle.sim
    assert isinstance(sim, Recorder)
    return list(sim.posts)


# --------------------------------------------------------------------------- whole runs


def test_batch_chat_sends_chat_bodies_to_the_batch_chat_root(tmp_path: Path, recorder: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS, BATCH_CHAT), handle_signals=False)
    assert summary.exit_code == 0 and summary.counts.ok == len(ROWS)
    sent = posts(recorder)
    assert len(sent) == len(ROWS)
    assert {path for path, _ in sent} == {CHAT_PATH}
    for _, body in sent:
        assert set(body) == {"model", "messages", "temperature", "max_tokens", "seed", "enable_thinking"}
        assert body["enable_thinking"] is False  # the spec leaves it out: the batch body never does
        assert body["model"] == "qwen-plus" and body["max_tokens"] == 32
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sorted(b["messages"][1]["content"] for _, b in sent) == sorted(
        f"Say something about {r['text']}" for r in ROWS
    )
    assert "batch-chat" in summary.line() and "at the batch price" in summary.line()


def test_results_attempts_and_the_run_record_mode_batch_chat(tmp_path: Path, recorder: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS, BATCH_CHAT), handle_signals=False)
    db = summary.db_path
    assert query(db, "SELECT DISTINCT mode, endpoint, status FROM results_view") == [
        ("batch-chat", wire.OPENAI_CHAT_PATH, "ok")
    ]
    assert query(db, "SELECT DISTINCT mode FROM attempts_view") == [("batch-chat",)]
    assert query(db, "SELECT count(*) FROM attempts_view") == [(len(ROWS),)]
    assert query(db, "SELECT mode, base_url, status FROM runs") == [
        ("batch-chat", recorder.compat_base_url, "finished")
    ]
    (price_version,) = {v for (v,) in query(db, "SELECT price_version FROM results_view")}
    assert price_version.endswith("+batch")


def test_online_runs_record_mode_online(tmp_path: Path, recorder: ThreadHandle) -> None:
    summary = run_job(write_job(tmp_path, ROWS), handle_signals=False)
    db = summary.db_path
    assert query(db, "SELECT DISTINCT mode FROM results_view") == [("online",)]
    assert query(db, "SELECT DISTINCT mode FROM attempts_view") == [("online",)]
    assert query(db, "SELECT mode, base_url FROM runs") == [("online", recorder.base_url)]
    assert CHAT_PATH not in {path for path, _ in posts(recorder)}
    assert "batch" not in summary.line()


def test_batch_chat_costs_half_the_online_price_with_no_cache_discount(tmp_path: Path, recorder: ThreadHandle) -> None:
    # A system prompt long enough for the simulator's implicit cache: every row after the first
    # (one at a time, so the same rows hit in both runs) reports cached input tokens.
    long_system = " ".join(f"rule{i} keep it short." for i in range(150))
    job = {"prompt": {"system": long_system}, "limits": {"concurrency": 1}}
    online = run_job(write_job(tmp_path / "online", ROWS, job), handle_signals=False)
    recorder.sim.reset()
    batch = run_job(write_job(tmp_path / "chat", ROWS, {**job, **BATCH_CHAT}), handle_signals=False)
    columns = "row_id, input_tokens, cached_tokens, output_tokens, cost_pusd"
    by_row = {r[0]: r[1:] for r in query(online.db_path, f"SELECT {columns} FROM results_view")}
    chat_rows = query(batch.db_path, f"SELECT {columns} FROM results_view")
    assert len(chat_rows) == len(by_row) == len(ROWS)
    assert sum(1 for r in chat_rows if r[2] > 0) == len(ROWS) - 1  # the cache did hit
    for row_id, inp, cached, out, pusd in chat_rows:
        o_inp, o_cached, o_out, o_pusd = by_row[row_id]
        assert (inp, cached, out) == (o_inp, o_cached, o_out)  # the same usage in both modes
        full = inp * Fraction("0.4") * MILLION + out * Fraction("1.2") * MILLION  # qwen-plus, first tier
        assert pusd == full / 2  # every input token at half the input price, cached or not
        online_cost = (inp - cached) * Fraction("0.4") * MILLION + cached * Fraction("0.08") * MILLION
        assert o_pusd == online_cost + out * Fraction("1.2") * MILLION  # online: hits at 20% of input
        assert (pusd < o_pusd) == (cached == 0)  # with hits, half price can cost more than online
    assert batch.counts.cost_pusd == sum(r[4] for r in chat_rows)
    attempts = query(batch.db_path, "SELECT sum(cost_pusd) FROM attempts_view")
    assert attempts == [(batch.counts.cost_pusd,)]


def test_budget_worst_cases_are_booked_at_the_batch_price(tmp_path: Path, recorder: ThreadHandle) -> None:
    job = {"parameters": {"enable_thinking": False}, "limits": {"max_cost_usd": 10.0}}
    online = run_job(write_job(tmp_path / "online", ROWS[:3], job), handle_signals=False)
    batch = run_job(write_job(tmp_path / "chat", ROWS[:3], {**job, **BATCH_CHAT}), handle_signals=False)
    sql = "SELECT r.row_id, a.worst_cost_pusd FROM attempts_view a JOIN results_view r USING (key)"
    online_worst, batch_worst = dict(query(online.db_path, sql)), dict(query(batch.db_path, sql))
    assert batch_worst.keys() == online_worst.keys() and len(batch_worst) == 3
    slack = 4  # pricing.ROUNDING_SLACK, added once to each worst case
    for row_id, worst in batch_worst.items():
        assert abs(2 * (worst - slack) - (online_worst[row_id] - slack)) <= 2  # rounded up in two parts


def test_a_row_done_online_is_not_bought_again_in_batch_chat(tmp_path: Path, recorder: ThreadHandle) -> None:
    run_job(write_job(tmp_path, ROWS[:5]), handle_signals=False)
    recorder.sim.reset()
    summary = run_job(write_job(tmp_path, ROWS, BATCH_CHAT), handle_signals=False)
    assert summary.already_done == 5 and summary.counts.sent == 3 and summary.exit_code == 0
    sent = posts(recorder)
    assert {path for path, _ in sent} == {CHAT_PATH}
    assert sorted(b["messages"][1]["content"] for _, b in sent) == [
        f"Say something about item number {i}" for i in (5, 6, 7)
    ]
    modes = query(summary.db_path, "SELECT row_id, mode FROM results_view ORDER BY row_index")
    assert modes == [(f"r{i}", "online" if i < 5 else "batch-chat") for i in range(8)]
    # ... and the rows bought in batch-chat are done for an online run too: the keys are the same
    recorder.sim.reset()
    again = run_job(write_job(tmp_path, ROWS), handle_signals=False)
    assert again.already_done == len(ROWS) and again.counts.sent == 0 and posts(recorder) == []


def test_a_model_the_batch_chat_api_does_not_serve_is_refused_before_anything(
    tmp_path: Path, recorder: ThreadHandle
) -> None:
    spec = write_job(tmp_path, ROWS, {**BATCH_CHAT, "model": {"name": "qwen-max"}})  # Batch API only
    with pytest.raises(SpecError) as err:
        run_job(spec, handle_signals=False)
    message = str(err.value)
    assert "does not serve 'qwen-max'" in message and '[api] mode = "batch-chat"' in message
    assert "qwen-plus" in message and "qwen3.5-flash" in message and "qwen-turbo" not in message
    assert posts(recorder) == [] and recorder.sim.stats()["requests"] == 0
    assert not load_spec(spec).db_path.exists()  # nothing was written either
    result = invoke_cli("run", str(spec))
    assert result.exit_code == 2 and "does not serve 'qwen-max'" in result.output
    assert posts(recorder) == []


def test_a_wrong_batch_chat_url_is_a_configuration_error_naming_it(tmp_path: Path, recorder: ThreadHandle) -> None:
    nowhere = "http://127.0.0.1:9/v1"  # nothing listens there; the online base URL is fine
    summary = run_job(write_job(tmp_path, ROWS[:2], {**BATCH_CHAT, "batch": {"base_url": nowhere}}))
    assert summary.exit_code == 2 and summary.status == "unreachable"
    assert f"mode batch-chat sends to {nowhere}: [batch] base_url" in summary.message
    assert posts(recorder) == []


def test_stream_is_refused_in_batch_chat(tmp_path: Path) -> None:
    spec = write_job(tmp_path, ROWS, {**BATCH_CHAT, "parameters": {"stream": True}})
    with pytest.raises(SpecError, match=r"\[parameters\] stream: the Batch Chat API answers each request whole"):
        load_spec(spec)


def test_simulate_sends_batch_chat_to_the_simulators_compatible_root(tmp_path: Path) -> None:
    summary = run_job(write_job(tmp_path, ROWS[:3], BATCH_CHAT), simulate=True, handle_signals=False)
    assert summary.exit_code == 0 and summary.counts.ok == 3
    assert "(simulated, batch-chat)" in summary.line()
    ((mode, base_url, simulated),) = query(summary.db_path, "SELECT mode, base_url, simulated FROM runs")
    assert mode == "batch-chat" and simulated == 1
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith(wire.COMPATIBLE_SUFFIX)


def test_status_names_the_mode_of_the_last_run(tmp_path: Path, recorder: ThreadHandle) -> None:
    spec = write_job(tmp_path, ROWS[:2], BATCH_CHAT)
    run_job(spec, handle_signals=False)
    result = invoke_cli("status", str(spec))
    assert result.exit_code == 0 and "last run #1 (batch-chat): finished" in result.output


# --------------------------------------------------------------------------- the pieces


def test_a_chat_request_keeps_the_online_key(tmp_path: Path) -> None:
    from batchrunner.source import Source

    spec = load_spec(write_job(tmp_path, ROWS[:1], {"parameters": {"stream": True}}))
    (request,) = Source(spec).renderer.requests(ROWS[0], 0, "r0")
    chat = chat_request(request)
    assert chat.key == request.key == request_key(request.path, request.body)
    assert chat.path == wire.OPENAI_CHAT_PATH and chat.body == wire.chat_body(request.body)
    assert chat.payload == canonical(chat.body)
    assert "stream" not in chat.body and chat.body["enable_thinking"] is False
    assert (chat.row_id, chat.row_index, chat.seed, chat.est_input_tokens) == (
        request.row_id,
        request.row_index,
        request.seed,
        request.est_input_tokens,
    )


def test_the_read_timeout_waits_for_the_queue_unless_set_above_the_default() -> None:
    assert read_timeout_s(Limits()) == QUEUE_TIMEOUT_S >= 3600
    assert read_timeout_s(Limits(timeout_s=10)) == QUEUE_TIMEOUT_S  # an online choice: too short here
    assert read_timeout_s(Limits(timeout_s=120)) == QUEUE_TIMEOUT_S
    assert read_timeout_s(Limits(timeout_s=1800)) == 1800


def test_the_route_of_each_mode(tmp_path: Path) -> None:
    prices = PriceTable.load()
    svc = Service("http://127.0.0.1:1/api/v1", "sk-x", simulated=True)
    online = load_spec(write_job(tmp_path / "a", ROWS[:1]))
    chat = load_spec(write_job(tmp_path / "b", ROWS[:1], BATCH_CHAT))
    r = route_of(online, svc, prices, wire.NativeWire())
    assert (r.mode, r.base_url, r.timeout_s, r.prices, r.wire.name) == ("online", svc.base_url, 10, prices, "dashscope")
    r = route_of(chat, svc, prices, wire.NativeWire())
    assert (r.mode, r.base_url, r.timeout_s, r.wire.name, r.stream) == (
        "batch-chat",
        "http://127.0.0.1:1" + wire.COMPATIBLE_SUFFIX,
        QUEUE_TIMEOUT_S,
        "openai",
        False,
    )
    assert r.prices.batch and r.prices.version.endswith("+batch")
    real = route_of(chat, Service("https://x.example/api/v1", "sk-x"), prices, wire.NativeWire())
    assert real.base_url == wire.BATCH_CHAT_BASE_URL


def test_the_batch_chat_url_spec_then_environment_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = load_spec(write_job(tmp_path / "a", ROWS[:1], BATCH_CHAT))
    assert (
        batch_chat_url(plain) == wire.BATCH_CHAT_BASE_URL == "https://batch.dashscope.aliyuncs.com/compatible-mode/v1"
    )
    monkeypatch.setenv(BATCH_CHAT_URL_ENV, "https://env.example/compatible-mode/v1/")
    assert batch_chat_url(plain) == "https://env.example/compatible-mode/v1"
    own = load_spec(
        write_job(tmp_path / "b", ROWS[:1], {**BATCH_CHAT, "batch": {"base_url": "https://own.example/v1"}})
    )
    assert batch_chat_url(own) == "https://own.example/v1"


def test_the_key_goes_only_over_https_or_loopback(tmp_path: Path) -> None:
    prices, beijing = PriceTable.load(region="cn"), {"mode": "batch-chat", "region": "cn"}

    def spec(folder: str, url: str) -> Any:
        return load_spec(write_job(tmp_path / folder, ROWS[:1], {"api": beijing, "batch": {"base_url": url}}))

    with pytest.raises(SpecError, match="not https"):
        check_route(spec("a", "http://10.1.2.3/v1"), prices, simulate=False)
    assert check_route(spec("a", "http://10.1.2.3/v1"), prices, simulate=True) == []  # the simulator's URL is used
    assert check_route(spec("b", "http://127.0.0.1:9/v1"), prices, simulate=False) == []
    assert check_route(spec("c", "https://batch.example/v1"), prices, simulate=False) == []


def test_a_region_other_than_beijing_is_warned_about(tmp_path: Path) -> None:
    intl = load_spec(write_job(tmp_path / "a", ROWS[:1], BATCH_CHAT))
    (warning,) = check_route(intl, PriceTable.load(), simulate=False)
    assert "Beijing" in warning and '"intl"' in warning
    cn = load_spec(write_job(tmp_path / "b", ROWS[:1], {"api": {"mode": "batch-chat", "region": "cn"}}))
    assert check_route(cn, PriceTable.load(region="cn"), simulate=False) == []
    assert check_route(load_spec(write_job(tmp_path / "c", ROWS[:1])), PriceTable.load(), simulate=False) == []


def test_which_models_the_batch_apis_serve() -> None:
    chat = ["qwen-flash", "qwen-plus", "qwen3-max", "qwen3-vl-plus", "qwen3.5-flash", "qwen3.5-plus"]
    for table in (PriceTable.load(), PriceTable.load(region="cn"), PriceTable.load().for_batch()):
        assert served_models(table, chat=True) == chat
        assert check_batch_model(table, "qwen3.5-plus", chat=True) is None
        assert check_batch_model(table, "QWEN3-MAX-PREVIEW", chat=True) is None  # an alias, any case
        assert check_batch_model(table, "qwen-turbo", chat=False) is None
    assert "qwen-turbo" in served_models(PriceTable.load(), chat=False)
    with pytest.raises(SpecError, match=r"the Batch API \(\[api\] mode = \"batch\"\) does not serve 'qwen3.5-plus'"):
        check_batch_model(PriceTable.load(), "qwen3.5-plus", chat=False)


def test_an_unknown_model_is_a_warning_and_a_flag_in_pricing_serves_it() -> None:
    warning = check_batch_model(PriceTable.load(), "my-own-qwen", chat=True)
    assert warning is not None and "not in the price table" in warning and "batch_chat = true" in warning
    mine = {"my-own-qwen": {"tiers": [{"input": 1.0, "output": 2.0}], "batch_chat": True}}
    table = load_prices("my-own-qwen", spec_models=mine)
    assert check_batch_model(table, "my-own-qwen", chat=True) is None
    assert "my-own-qwen" in served_models(table, chat=True)
    with pytest.raises(SpecError, match="does not serve 'my-own-qwen'"):
        check_batch_model(table, "my-own-qwen", chat=False)


def test_an_unknown_model_is_sent_with_a_warning(
    tmp_path: Path, recorder: ThreadHandle, caplog: pytest.LogCaptureFixture
) -> None:
    # Priced by the spec but not flagged: the table knows it, so it is refused; not priced at
    # all: a warning, and the service decides (the simulator answers any qwen name).
    flagless = {"my-qwen": {"tiers": [{"input": 1.0, "output": 2.0}]}}
    with pytest.raises(SpecError, match="does not serve 'my-qwen'"):
        run_job(
            write_job(
                tmp_path / "a", ROWS[:2], {**BATCH_CHAT, "model": {"name": "my-qwen"}, "pricing": {"models": flagless}}
            )
        )
    assert posts(recorder) == []
    with caplog.at_level(logging.WARNING, logger="batchrunner"):
        summary = run_job(
            write_job(tmp_path / "b", ROWS[:2], {**BATCH_CHAT, "model": {"name": "qwen-plus-2099-01-01"}})
        )
    assert any("whether the Batch Chat API serves it is not known" in r.getMessage() for r in caplog.records)
    assert summary.counts.sent == 2 and {p for p, _ in posts(recorder)} == {CHAT_PATH}
