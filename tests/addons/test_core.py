from __future__ import annotations

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons.core import SluiceCore, connect_lazily
from rules.secrets import fingerprint
from tests.addons.proxy import CLIENT_KEY, llm_flow


def test_sluice_connects_upstream_lazily_by_default() -> None:
    with taddons.context(Proxyserver()) as tctx:
        assert tctx.options.connection_strategy == "eager"  # mitmproxy's own default
        tctx.master.addons.add(SluiceCore())
        assert tctx.options.connection_strategy == "lazy"


def test_an_explicit_connection_strategy_wins_even_when_it_is_mitmproxys_default() -> None:
    with taddons.context(Proxyserver()) as tctx:
        tctx.options.update(connection_strategy="eager")  # as `--set connection_strategy=eager` does
        connect_lazily(tctx.options)
        assert tctx.options.connection_strategy == "eager"


def test_without_the_option_nothing_happens() -> None:
    with taddons.context() as tctx:
        connect_lazily(tctx.options)
        assert "connection_strategy" not in tctx.options


def test_flows_are_shown_by_a_ui_when_saved_or_printed_not_by_a_plain_mitmdump(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    async def shown(*settings: str) -> bool:
        master = DumpMaster(options.Options(), with_termlog=False, with_dumper=True)
        core = SluiceCore()
        master.addons.add(core)
        if settings:
            master.options.set(*settings)
        core.configure(set())
        return core.flows_shown

    assert asyncio.run(shown()) is False
    assert asyncio.run(shown("flow_detail=2")) is False  # request lines and headers only
    assert asyncio.run(shown("flow_detail=3")) is True  # bodies printed through the LLM contentview
    assert asyncio.run(shown(f"save_stream_file={tmp_path / 'flows'}")) is True
    with taddons.context() as tctx:  # any other master: mitmweb, the console
        core = SluiceCore()
        tctx.master.addons.add(core)
        core.configure(set())
        assert core.flows_shown is True


# --- the call record, created by the core's request hook ----------------------------------------------------


def test_the_core_creates_a_metered_calls_record_as_the_request_arrived() -> None:
    core = SluiceCore()
    flow = llm_flow(headers=[("X-Claude-Code-Session-Id", "session-1")])
    flow.request.path = "/v1/messages?beta=true"
    core.request(flow)
    call = core.calls[flow.id]
    assert (call.flow_id, call.host, call.method, call.path) == (
        flow.id,
        "api.anthropic.com",
        "POST",
        "/v1/messages",
    )
    assert (call.provider, call.api, call.session_id) == ("anthropic", "messages", "session-1")
    assert call.credential == fingerprint(CLIENT_KEY) and call.request_headers["x-api-key"] == CLIENT_KEY
    assert call.started == flow.request.timestamp_start and not call.answered_locally
    core.request(flow)
    assert core.calls[flow.id] is call  # created once

    answered = llm_flow()
    answered.response = http.Response.make(200)  # by another addon, before sluice's parts ran
    core.request(answered)
    assert core.calls[answered.id].answered_locally


def test_a_calls_record_keeps_only_the_request_headers_a_part_reads() -> None:
    core = SluiceCore()
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    flow = llm_flow(headers=[("User-Agent", "claude-cli/2.0"), ("Traceparent", trace), ("Cookie", "a=b")])
    core.request(flow)
    assert core.calls[flow.id].request_headers == {"x-api-key": CLIENT_KEY, "traceparent": trace}


def test_a_provider_registered_later_has_its_key_header_kept_and_read() -> None:
    from tests.rules.providers.toy import TOY  # registers the toy provider, as a module of one's own would

    core = SluiceCore()
    key = [("X-Toy-Key", "toy-key-1")]
    flow = llm_flow(host=TOY.hosts[0], path="/toy/v1/complete", key=None, headers=key)
    core.request(flow)
    call = core.calls[flow.id]
    assert call.request_headers == {"x-toy-key": "toy-key-1"}
    assert call.credential == fingerprint("toy-key-1")


def test_no_record_for_what_is_not_a_metered_call_or_not_live() -> None:
    core = SluiceCore()
    listing = llm_flow(path="/v1/models")
    listing.request.method = "GET"
    saved = llm_flow()
    saved.live = False  # a flow read back from a file
    for flow in (listing, saved):
        core.request(flow)
    assert core.calls == {}


def test_a_repointed_request_is_recorded_where_it_really_goes() -> None:
    core = SluiceCore()
    flow = llm_flow()
    flow.request.data.host = "203.0.113.9"
    core.request(flow)
    assert core.calls[flow.id].host == "203.0.113.9"  # where the client's connection was headed
    core.repoint(flow, "api.anthropic.com")
    assert flow.request.host == "api.anthropic.com" and core.calls[flow.id].host == "api.anthropic.com"


def test_a_gateway_is_named_by_its_genai_prices_id_and_a_typo_stops_start_up(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[upstreams]]\nhost = "openrouter.ai"\nprovider = "openrouter"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text('[[upstreams]]\nhost = "openrouter.ai"\nprovider = "openruoter"\n')
    core = SluiceCore()
    with taddons.context(core) as tctx:
        tctx.configure(core, sluice_config=str(good), sluice_db=str(tmp_path / "sluice.db"))
        assert core.speaks("openrouter.ai").name == "openai"  # gateways speak OpenAI's format
        assert core.billed_by("openrouter.ai") == "openrouter"
        with pytest.raises(exceptions.OptionsError, match="unknown provider 'openruoter'"):
            tctx.configure(core, sluice_config=str(typo))


def test_the_core_opens_the_database_and_a_new_location_is_a_new_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    core = SluiceCore()
    with taddons.context(core) as tctx:
        tctx.configure(core, sluice_db=str(tmp_path / "a.db"))
        first = core.store
        assert first is not None and first.file == tmp_path / "a.db"
        with first.reading() as db:
            assert db["calls"].exists()
        tctx.configure(core, sluice_marks="symbols")  # another option: the same store
        assert core.store is first
        tctx.configure(core, sluice_db=str(tmp_path / "b.db"))
        assert core.store is not first and core.store.file == tmp_path / "b.db"
        core.done()


def test_a_database_that_cannot_be_opened_stops_start_up_naming_the_option(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a-file").write_text("not a directory")
    where = tmp_path / "a-file" / "sluice.db"
    core = SluiceCore()
    with taddons.context(core) as tctx:
        tctx.configure(core, sluice_db=str(tmp_path / "good.db"))
        good = core.store
        with pytest.raises(exceptions.OptionsError, match=f"sluice_db: cannot open {where}: "):
            tctx.configure(core, sluice_db=str(where))
        assert core.store is good  # the rows keep going where they went
        core.done()


def test_a_postgresql_url_that_cannot_be_parsed_stops_start_up_without_its_password() -> None:
    core = SluiceCore()
    with taddons.context(core) as tctx:
        with pytest.raises(exceptions.OptionsError) as raised:
            tctx.configure(core, sluice_db="postgresql://sluice:s3cret%ZZpw@127.0.0.1/sluice")
        message = str(raised.value)
        assert message.startswith("sluice_db: cannot open postgresql://sluice:***@127.0.0.1/sluice: ")
        assert "invalid percent-encoded token" in message and "s3cret" not in message
        core.done()
