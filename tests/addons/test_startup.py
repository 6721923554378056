from __future__ import annotations

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.chain import Chain
from addons.core import SluiceCore
from addons.startup import StartupError, lines_for, unknown_sluice_options

KNOWN = ("sluice_config", "sluice_db", "sluice_keep_body", "sluice_decode_max", "listen_port")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("sluice_conifg", '--set sluice_conifg: unknown option (did you mean "sluice_config"?)'),
        ("sluice_dbb", '--set sluice_dbb: unknown option (did you mean "sluice_db"?)'),
        ("Sluice_keepbody", '--set Sluice_keepbody: unknown option (did you mean "sluice_keep_body"?)'),
        (
            "sluice_zzzzzzzz",
            "--set sluice_zzzzzzzz: unknown option "
            "(sluice's options: sluice_config, sluice_db, sluice_decode_max, sluice_keep_body)",
        ),
    ],
)
def test_a_misspelt_sluice_option_is_named_with_what_it_probably_meant(name: str, problem: str) -> None:
    assert unknown_sluice_options({name: "x"}, KNOWN) == [problem]


def test_options_of_other_addons_are_left_to_them() -> None:
    # mitmproxy keeps them aside for an addon loaded later; they are not sluice's to judge.
    assert unknown_sluice_options({"my_addon_flag": "1", "web_colums": "x"}, KNOWN) == []


def test_the_core_refuses_a_misspelt_option_set_on_the_command_line() -> None:
    core = SluiceCore()
    with taddons.context(core) as tctx:
        tctx.options.set("sluice_conifg=team.toml", defer=True)
        with pytest.raises(StartupError, match="sluice_conifg: unknown option"):
            tctx.configure(core)


def test_a_config_problem_found_by_a_part_is_split_into_file_and_fields() -> None:
    error = exceptions.OptionsError(
        "sluice_config /srv/team.toml: upstreams[0].keys[0]: environment variable K1 is not set or empty"
    )
    assert lines_for(error, "/srv/team.toml") == [
        "file: /srv/team.toml",
        "upstreams[0].keys[0]: environment variable K1 is not set or empty",
    ]


def test_any_other_option_error_is_shown_as_it_is() -> None:
    assert lines_for(exceptions.OptionsError("stream_large_bodies: no"), "/srv/team.toml") == [
        "stream_large_bodies: no"
    ]
    stand_in = "sluice_config: budget_price_unknown_models_as.anthropic = 'x': no price known"
    assert lines_for(exceptions.OptionsError(stand_in), "/srv/team.toml") == [stand_in]


def test_in_a_running_proxy_or_a_test_an_option_error_stays_mitmproxys_to_show(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules]\nbogus = 1\n")
    core = SluiceCore()
    chain = Chain("sluice", [core])
    refused = pytest.raises(exceptions.OptionsError, match=r"rules\.bogus: unknown")
    with taddons.context(chain) as tctx, refused:
        tctx.configure(chain, sluice_config=str(bad), sluice_db=str(tmp_path / "s.db"))


def test_an_unknown_mark_style_is_refused() -> None:
    core = SluiceCore()
    with taddons.context(core) as tctx, pytest.raises(exceptions.OptionsError, match="not one of emoji"):
        tctx.configure(core, sluice_marks="sparkles")
