"""Fixtures for the checks restated from mmseg's backbone tests."""
import pytest

from ppenc.keys import KEY_ENV_VAR


@pytest.fixture(autouse=True)
def _key_from_environment(monkeypatch, session_key_file):
    """The encrypted variants resolve their key when they are built. It comes from
    ``$PPENC_KEY_FILE`` here, as in a user's shell, so that every constructor call takes
    exactly the arguments the stock class takes (no ``key_file=``)."""
    monkeypatch.setenv(KEY_ENV_VAR, session_key_file)
