"""Who is calling, and may they: authentication, then one Casbin decision per call.

Credentials come in ``Authorization: Bearer ...``: an API key (``sgk_...``, staff and
services, see :mod:`siloguard.api.keys`) or a subject token (``sgs_...``, issued when a data
subject verifies a request). No header is an anonymous caller, who can only submit and
verify requests: acting as the subject they claim to be, whose claim the one-time code then
proves.

Every route names an :data:`OPERATIONS` entry; :func:`authorize` turns it into an
:class:`~siloguard.policies.enforcer.AccessRequest` (role, principal, store, category,
action, purpose, owner) for the shipped Casbin policy. Keys are bound to their role in their
store (or ``*``) the first time they are seen; subjects hold ``data_subject`` by identity and
reach only requests they own (their principal is derived from the subject digest, so no
customer id reaches the policy). Anything the policy does not allow is 403.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from siloguard.api.errors import ApiError
from siloguard.api.keys import ApiKey, authenticate_key
from siloguard.dsr.service import DsrService, SubjectSession
from siloguard.policies.enforcer import STORE_OWNER, AccessRequest, PolicyEnforcer

__all__ = ["CENTRAL", "OPERATIONS", "Authorizer", "Caller"]

#: The store id of operations that span every store (requests, consent): rules on "*" cover it.
CENTRAL = "central"
PURPOSE = "essential.legal_obligation"
#: operation -> (data category, action) asked of the policy, purpose essential.legal_obligation.
OPERATIONS: dict[str, tuple[str, str]] = {
    "submit": ("user.privacy_preferences", "submit"),
    "review": ("user.privacy_preferences", "review"),
    "decide": ("user.privacy_preferences", "decide"),
    "access": ("user", "export"),
    "consent_read": ("user.privacy_preferences", "read"),
    "consent_write": ("user.privacy_preferences", "submit"),
    "fulfil": ("user", "fulfil"),
}


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a key, a verified subject, or anonymous (both None)."""

    key: ApiKey | None = None
    session: SubjectSession | None = None

    @property
    def anonymous(self) -> bool:
        return self.key is None and self.session is None

    @property
    def actor(self) -> str:
        """How audit events name this caller (never a customer id)."""
        return self.key.principal if self.key else "data-subject"


class Authorizer:
    def __init__(self, engine: Engine, service: DsrService, enforcer: PolicyEnforcer) -> None:
        self.engine = engine
        self.service = service
        self.enforcer = enforcer
        self._bound: set[str] = set()
        self._lock = threading.Lock()

    def caller(self, authorization: str | None) -> Caller:
        if not authorization:
            return Caller()
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthenticated", "use 'Authorization: Bearer <API key or subject token>'", {"www-authenticate": "Bearer"})
        if token.startswith("sgk_"):
            key = authenticate_key(self.engine, token)
            if key is None:
                raise ApiError(401, "unauthenticated", "unknown or revoked API key", {"www-authenticate": "Bearer"})
            return Caller(key=key)
        if token.startswith("sgs_"):
            session = self.service.session(token[4:])
            if session is None:
                raise ApiError(401, "unauthenticated", "unknown or expired subject token: verify a request again", {"www-authenticate": "Bearer"})
            return Caller(session=session)
        raise ApiError(401, "unauthenticated", "the bearer token is neither an API key nor a subject token", {"www-authenticate": "Bearer"})

    def _bind(self, key: ApiKey) -> None:
        if key.id in self._bound:
            return
        with self._lock:
            if key.id not in self._bound:
                self.enforcer.assign_role(key.principal, key.role, key.store or "*")
                self._bound.add(key.id)

    def authorize(self, caller: Caller, operation: str, *, store: str = CENTRAL, subject_digest: str | None = None) -> None:
        """Raise 401/403 unless the policy allows ``caller`` this operation.

        ``subject_digest`` names the subject whose data it is (a request's owner); a data
        subject must be that subject.
        """
        category, action = OPERATIONS[operation]
        if caller.key is not None:
            self._bind(caller.key)
            role, principal, owner = caller.key.role, caller.key.principal, STORE_OWNER
        else:
            if subject_digest is None:
                raise ApiError(401, "unauthenticated", "this operation needs a subject token or an API key", {"www-authenticate": "Bearer"})
            from siloguard.dsr.service import subject_principal

            role = "data_subject"
            owner = subject_principal(subject_digest)
            if caller.session is not None:
                principal = caller.session.principal
            elif operation == "submit":
                principal = owner  # an anonymous caller files (and verifies) as the subject they name
            else:
                raise ApiError(401, "unauthenticated", "this operation needs a subject token or an API key", {"www-authenticate": "Bearer"})
        decision = self.enforcer.decide(AccessRequest(role, principal, store, category, action, PURPOSE, owner))
        if not decision.allowed:
            raise ApiError(403, "forbidden", "the access policy does not allow this operation for your role")
