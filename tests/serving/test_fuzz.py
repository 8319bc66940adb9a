"""A schemathesis fuzz run over the service's own OpenAPI schema (/docs.json) against a real `bentoml serve`:
bounded examples per operation, positive (fits the schema) and negative (breaks it) bodies, derandomised so
every run sends the same requests. No answer may be a 5xx; every refusal is a 4xx with a JSON reason; the
service stays healthy afterwards."""

from __future__ import annotations

import collections

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

EXAMPLES = 40  # per operation and mode with a body (bounded: the whole run takes ~20 s here)


def fuzz(
    operation,
    mode: GenerationMode,
    base_url: str,
    session: requests.Session,
    counts: collections.Counter,
    examples: int,
) -> None:
    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(operation.as_strategy(mode))
    def one(case) -> None:
        response = case.call(base_url=base_url, session=session, timeout=30)
        counts[(f"{operation.method.upper()} {operation.path}", mode.value, response.status_code)] += 1
        assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
        if 400 <= response.status_code < 500 and operation.path in OURS:
            assert response.json()["error"], response.text[:300]

    one()


OURS = ("/classify", "/generate", "/metadata", "/model-card")


def test_fuzz_over_the_openapi_schema_gives_no_5xx(server):
    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= set(OURS)  # our routes are in the schema BentoML serves
    counts: collections.Counter = collections.Counter()
    with requests.Session() as session:
        for operation in operations:
            has_body = bool(operation.body)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_body else (GenerationMode.POSITIVE,):
                fuzz(operation, mode, server, session, counts, EXAMPLES if has_body else 3)
        assert session.get(f"{server}/healthz", timeout=10).status_code == 200
    by_status = collections.Counter()
    for (_, _, status), n in counts.items():
        by_status[status] += n
    print("fuzz counts (operation, mode, status):", dict(sorted(counts.items())), "by status:", dict(by_status))
    assert sum(by_status.values()) >= 100 and not any(s >= 500 for s in by_status)
    assert any(400 <= s < 500 for s in by_status) and by_status[200] > 0  # both refusals and answers were exercised
