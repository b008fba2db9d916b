"""schemathesis against the app's own OpenAPI schema: no 5xx, no response outside the schema.

Every operation gets generated requests (valid and invalid) with the credential its intended
callers use, so the fuzzing reaches the handlers and the service behind them, not only the
authentication check. About 30 examples per operation, a few hundred in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.conftest import Api, build_api
from tests.dsr.helpers import SUBJECT
from tests.storage.databases import fresh_database

EXAMPLES_PER_OPERATION = 25  # per generation mode: (12 operations x 2 modes x 25) = 600


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with fresh_database("sqlite", tmp) as url:
        # Bodies up to 1 MB reach validation (422); the 16 KiB limit (413) is tested in test_requests.
        for api in build_api(tmp, url, max_body_bytes=1_000_000):
            _, token = api.verified("erasure", SUBJECT)
            api.keys["subject"] = token
            yield api


def _credential(path: str, method: str) -> str | None:
    if path.startswith("/v1/stores/"):
        return "store_alpha"
    if path.startswith("/v1/consent"):
        return "subject"
    if (path == "/v1/requests" and method == "POST") or path.endswith("/verify"):
        return None
    return "dpo"


# schemathesis' own pytest plugin (``from_fixture``) does not run on pytest 9 yet, so the
# operations are driven with its hypothesis strategies directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_every_response_matches_the_schema(fuzzed_api: Api, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_api.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    calls = 0
    for operation in operations:
        name = _credential(operation.path, operation.method.upper())
        headers = fuzzed_api.auth(fuzzed_api.keys[name]) if name else {}

        @given(case=operation.as_strategy(generation_mode=mode, headers=headers or None))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            # A public key's place on the P-256 curve cannot be said in JSON Schema: a generated
            # `answer_key` is schema-valid and still (rightly) refused with 422. Everything else
            # of such a request is checked as usual.
            keyed = isinstance(case.body, dict) and "answer_key" in case.body
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance] if keyed else None)

        try:
            run()
        except Unsatisfiable:
            # Only an operation without any input (GET /v1/health) has no invalid request.
            assert mode is GenerationMode.NEGATIVE and operation.path == "/v1/health"
    assert calls >= 15 * len(operations)  # about 550 calls over both modes
