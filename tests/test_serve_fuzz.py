"""Schema-driven fuzzing (schemathesis) of every endpoint of a live server, from the app's
own OpenAPI document: whatever the generated request, no 5xx, and every error answer is in
the OpenAI error shape."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from genforge.serve.engine import Limits
from serving import LiveServer, train_runs


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    runs = train_runs(tmp_path_factory.mktemp("fuzz"), ("tiny-gpt", "tiny-vae", "tiny-diffusion", "tiny-sentiment", "tiny-digits"))
    # small limits: the fuzzer asks for as much as the schema allows
    with LiveServer(list(runs.values()), Limits(workers=2, max_tokens=24, max_n=2, max_images=2)) as s:
        yield s


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, live):
    r = case.call(base_url=live.url, timeout=30)
    assert r.status_code < 500, f"{case.method} {case.path} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        err = r.json().get("error")
        assert isinstance(err, dict) and err.get("message") and err.get("type"), r.text[:300]
