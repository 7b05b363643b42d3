"""A running LiteLLM proxy for the whole session (see litellm_proxy.py).

On a fresh machine the first run creates the proxy's virtualenv (1-3 minutes);
every run starts the proxy (10-35 s) and stops it at the end. Nothing here skips: when the
virtualenv cannot be made or the proxy does not start, the tests that need it fail with
the reason and the proxy's last log lines.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.litellm_proxy import LiteLLMProxy, ProxyUnavailable, ensure_venv


def _say(config: pytest.Config, message: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[litellm] {message}")


@pytest.fixture(scope="session")
def litellm_proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    problem = None
    try:
        python, installed = ensure_venv(announce=lambda message: _say(request.config, message))
        proxy = LiteLLMProxy(python, tmp_path_factory.mktemp("litellm-proxy"))
        try:
            proxy.start()
            proxy.warm_up()
        except BaseException:
            proxy.stop()
            raise
    except (ProxyUnavailable, OSError) as exc:
        problem = f"The LiteLLM proxy for tests/servers is not available: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)  # outside the except block: one message, no chained traceback
    _say(request.config, f"virtualenv {installed}; proxy ready on {proxy.root_url} in {proxy.started_in:.1f} s")
    try:
        yield proxy
    finally:
        proxy.stop()
