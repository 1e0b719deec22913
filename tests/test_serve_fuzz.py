"""Schema-driven fuzzing (schemathesis) of every endpoint of a live server, from the app's
own OpenAPI document: whatever the generated request, no 5xx, and every error answer is in
the OpenAI error shape. Uses schemathesis' strategies with plain hypothesis (no pytest
plugin, which is tied to pytest internals)."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from genforge.serve.engine import Limits
from serving import LiveServer


@pytest.fixture(scope="module")
def live(serve_runs):
    runs = [serve_runs[k] for k in ("tiny-gpt", "tiny-vae", "tiny-diffusion", "tiny-sentiment", "tiny-digits")]
    # small limits: the fuzzer asks for as much as the schema allows
    with LiveServer(runs, Limits(workers=2, max_tokens=24, max_n=2, max_images=2)) as s:
        yield s


def test_no_server_errors(live):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    labels = sorted(f"{op.method.upper()} {op.path}" for op in ops)
    assert {"POST /v1/completions", "POST /v1/chat/completions", "POST /v1/images/generations",
            "POST /v1/classifications", "GET /v1/models", "GET /health"} <= set(labels), labels
    for op in ops:
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            r = case.call(base_url=live.url, timeout=30)
            assert r.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {r.status_code}: {r.text[:500]}"
            if r.status_code >= 400:
                err = r.json().get("error")
                assert isinstance(err, dict) and err.get("message") and err.get("type"), r.text[:300]

        check()
