"""The CLI explains itself and turns bad settings into a message, not a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from carls.cli import main


def test_help_lists_the_areas_and_the_environment_variables() -> None:
    out = CliRunner().invoke(main, ["--help"]).output
    for word in ("infra", "demo", "settings", "CARLS_KAFKA_BOOTSTRAP_SERVERS", "CARLS_KEYSPACE"):
        assert word in out


def test_infra_help_explains_where_state_lives() -> None:
    out = CliRunner().invoke(main, ["infra", "--help"]).output
    assert "CARLS_STATE_DIR" in out
    assert "Maven Central" in out


def test_bad_settings_are_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARLS_KEYSPACE", "Not Valid")
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 1
    assert "invalid settings" in result.output
    assert "keyspace" in result.output


def test_settings_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARLS_CASSANDRA_PASSWORD", "hunter2")
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 0
    assert "hunter2" not in result.output
    assert "CARLS_CASSANDRA_PASSWORD" in result.output
