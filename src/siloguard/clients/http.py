"""The store's own HTTP API for its staff: recommendations for a customer at the till or desk.

A store site serves it itself (``siloguard store serve --site DIR``), with its own keys,
policy, database and audit log: it is not the privacy service's API and never talks to it.

* **Keys**: ``siloguard store staff-key NAME --site DIR`` makes a key for a staff member and
  prints it once; the site keeps only its SHA-256 (``DIR/keys/staff.json``, mode 0600). A
  request carries it as ``Authorization: Bearer <key>``; the staff member it names is the
  principal (``staff:<name>``, role ``store_operator``) the gate decides for.
* **Route**: ``POST /v1/recommendations`` with ``{"customer": "<id>", "k": 10}``. The customer
  id travels in the body, not the path, so access logs never hold it. The answer is the
  :class:`~siloguard.clients.recommend.Recommendation` as JSON; a customer who is unknown, does
  not consent, withdrew or was erased gets the same 404, so the answer tells nothing about
  them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from siloguard.config import Settings
from siloguard.errors import AccessDenied, ConfigError

__all__ = ["Ask", "STAFF_KEYS", "create_staff_app", "new_staff_key", "staff_for_key"]

STAFF_KEYS = "staff.json"
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,31}")
_PREFIX = "sgs_"


def _keys_file(settings: Settings) -> Path:
    return Path(settings.keys.root) / STAFF_KEYS


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _read(settings: Settings) -> dict[str, dict]:
    path = _keys_file(settings)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): dict(v) for k, v in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        raise ConfigError(f"{path} is damaged: remove it and create the staff keys again") from None


def new_staff_key(settings: Settings, name: str) -> str:
    """A new key for staff member ``name`` (replacing theirs); only its SHA-256 is kept."""
    from siloguard._files import write_atomic

    if not _NAME.fullmatch(name) or re.search(r"\d{5}", name):
        raise ConfigError(f"staff name {name!r}: lowercase letters, digits, '.', '_' or '-', starting with a letter, at most 32")
    keys = _read(settings)
    key = _PREFIX + secrets.token_urlsafe(32)
    keys[name] = {"sha256": _digest(key), "created": datetime.now(UTC).isoformat(timespec="seconds")}
    path = _keys_file(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(keys, indent=1).encode(), mode=0o600)
    return key


def staff_for_key(settings: Settings, key: str | None) -> str | None:
    """The staff member a key belongs to, or None (compared in constant time)."""
    if not key or not key.startswith(_PREFIX):
        return None
    digest = _digest(key)
    found = None
    for name, entry in _read(settings).items():
        if hmac.compare_digest(str(entry.get("sha256", "")), digest):
            found = name
    return found


class Ask(BaseModel):
    """A request for one customer's recommendations."""

    customer: str = Field(min_length=1, max_length=64)
    k: int = Field(default=10, ge=1, le=100)


def create_staff_app(settings: Settings, store: str, *, model_file: Path | None = None, recommender=None):  # noqa: ANN001, ANN201
    """The store's staff API (FastAPI), its recommender built once at start-up."""
    from siloguard.clients.recommend import Recommender

    app = FastAPI(title=f"siloguard store {store}: staff API", docs_url=None, redoc_url=None, openapi_url=None)
    state: dict[str, Recommender] = {}

    def engine() -> Recommender:
        if "r" not in state:
            state["r"] = recommender or Recommender(settings, store, model_file=model_file)
        return state["r"]

    def staff(authorization: Annotated[str | None, Header()] = None) -> str:  # noqa: FA102
        scheme, _, key = (authorization or "").partition(" ")
        name = staff_for_key(settings, key.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            raise HTTPException(status_code=401, detail="a staff key is needed: Authorization: Bearer <key> (siloguard store staff-key)")
        return name

    @app.post("/v1/recommendations")
    # A default, not Annotated[...]: the dependency is a closure, which a string annotation
    # (from __future__ import annotations) could not name.
    def recommendations(ask: Ask, name: str = Depends(staff)) -> dict:  # noqa: B008
        try:
            answer = engine().recommend(ask.customer, k=ask.k, staff_name=name)
        except AccessDenied:
            raise HTTPException(status_code=404, detail="no recommendation for this customer") from None
        return answer.to_json()

    @app.get("/healthz")
    def health() -> dict:
        return {"store": store, "status": "ok"}

    return app
