"""Zero-trust access decisions with Casbin: default deny, deny beats allow, fail closed.

Every request names the role the principal acts in, the principal, the store, the data
category, the action, the purpose and the data's owner (:class:`AccessRequest`). The
model is ``model.conf``, the rules ``policy.csv`` (or a database through the
``sqlalchemy-adapter`` package), and the roles and actions ``roles.yaml``, all next to this
module. Categories and purposes are fideslang keys matched hierarchically (a rule on
``user.behavior`` covers ``user.behavior.purchase_history``).

What keeps this closed, beyond the model:

* Rules and role bindings are checked against the vocabulary when loaded and when added:
  a quoted value, a matcher expression or a typo in a rule would otherwise never match, and
  a deny rule that never matches is an allow. A policy that fails the check is not loaded.
* Every definition in ``model.conf`` must survive loading (Casbin's ``FastModel`` keeps only
  the first definition of each section), the effect must be allow-and-deny, and the matcher
  may not ``eval()`` policy text.
* Requests are checked before evaluation: a missing attribute is a deny, not an empty string
  compared with an empty rule field. The matching functions also refuse empty values.
* Any exception during evaluation is a deny.

Decisions are evaluated from an index of the rules Casbin loaded (:class:`_RuleIndex`), built
again after every change: for a request only the rules keyed by its role, store (or ``*``),
action (or ``*``) and an ancestor of its category and of its purpose (or ``*``) are looked at,
a few dozen dictionary lookups whatever the number of rules. The index answers exactly what
Casbin's evaluation of ``model.conf`` answers (same decision, same rule named), which a test
checks on random policies and requests; a model whose matcher is not the shipped one is
evaluated by Casbin itself.

Decisions are cached per policy version; every change made through this class bumps the
version, so a cached decision never outlives the policy that made it. Changes made to a
policy database behind this object's back take effect at :meth:`PolicyEnforcer.reload`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

import casbin
from casbin.effect.default_effectors import AllowAndDenyEffector
from casbin.model import fast_policy_filter
from casbin.persist import Adapter
from casbin.persist.adapters import FileAdapter

from siloguard._yaml import YamlDoc
from siloguard.errors import AccessDenied, ConfigError
from siloguard.policies.taxonomy import Taxonomy, ancestors, covers, load_taxonomy

__all__ = [
    "MODEL_PATH",
    "POLICY_PATH",
    "ROLES_PATH",
    "AccessRequest",
    "Decision",
    "PolicyEnforcer",
    "PolicyRule",
    "RoleBinding",
    "Vocabulary",
    "load_vocabulary",
]

log = logging.getLogger(__name__)

MODEL_PATH = Path(__file__).with_name("model.conf")
POLICY_PATH = Path(__file__).with_name("policy.csv")
ROLES_PATH = Path(__file__).with_name("roles.yaml")

WILDCARD = "*"
STORE_OWNER = "store"
SUBJECT_ROLE = "data_subject"
# Principal ids are "<kind>:<name>" ("staff:alice", "client:germany", "subject:12347"), so no
# principal can be named like a role: Casbin's g(x, x) is true for any x.
_PRINCIPAL = re.compile(r"[a-z][a-z0-9_-]*:[A-Za-z0-9][A-Za-z0-9._@-]*")
_SUBJECT = re.compile(r"subject:[A-Za-z0-9][A-Za-z0-9._-]*")
_STORE = re.compile(r"[a-z0-9][a-z0-9_-]*")

_REQUEST_TOKENS = ["r_role", "r_sub", "r_dom", "r_cat", "r_act", "r_purp", "r_owner"]
_POLICY_TOKENS = ["p_role", "p_dom", "p_cat", "p_act", "p_purp", "p_eft"]
_MODEL_DEFINITIONS = {"r": {"r"}, "p": {"p"}, "g": {"g"}, "e": {"e"}, "m": {"m"}}
_SECTION_KEYS = {
    "request_definition": "r",
    "policy_definition": "p",
    "role_definition": "g",
    "policy_effect": "e",
    "matchers": "m",
}


@dataclass(frozen=True)
class AccessRequest:
    """One question to the policy. ``owner`` is "store" or the owning subject's principal id."""

    role: str
    principal: str
    store: str
    category: str
    action: str
    purpose: str
    owner: str = STORE_OWNER


@dataclass(frozen=True)
class Decision:
    """The answer: allowed or not, why (no personal data), and the rule that decided."""

    allowed: bool
    reason: str
    rule: tuple[str, ...] = ()
    policy_version: int = 0


@dataclass(frozen=True)
class PolicyRule:
    role: str
    store: str
    category: str
    action: str
    purpose: str
    effect: str

    def as_casbin(self) -> list[str]:
        return list(astuple(self))


@dataclass(frozen=True)
class RoleBinding:
    principal: str
    role: str
    store: str

    def as_casbin(self) -> list[str]:
        return list(astuple(self))


@dataclass(frozen=True)
class Vocabulary:
    roles: frozenset[str]
    actions: frozenset[str]


def load_vocabulary(path: Path = ROLES_PATH) -> Vocabulary:
    doc = YamlDoc(path)
    sections = {name: value for name, _, value in doc.mapping(doc.root, "")}
    out: dict[str, frozenset[str]] = {}
    for section in ("roles", "actions"):
        if section not in sections:
            doc.fail(doc.root, section, "missing section")
        names = set()
        for name, key_node, _ in doc.mapping(sections[section], section):
            if not re.fullmatch(r"[a-z][a-z_]*", name):
                doc.fail(key_node, f"{section}.{name}", "use lower-case letters and _")
            names.add(name)
        out[section] = frozenset(names)
    if SUBJECT_ROLE not in out["roles"]:
        doc.fail(sections["roles"], f"roles.{SUBJECT_ROLE}", "the model needs this role")
    return Vocabulary(roles=out["roles"], actions=out["actions"])


def _as_tuple(r: AccessRequest) -> tuple[str, ...]:
    # dataclasses.astuple deep-copies; this is on the hot path.
    return (r.role, r.principal, r.store, r.category, r.action, r.purpose, r.owner)


# --- matching functions registered with Casbin --------------------------------------------
# Each refuses empty values, so an empty request attribute or an empty rule field (Casbin
# evaluates the matcher with empty rule fields when no rule is left to try) never matches.


def _under(request_key: Any, rule_key: Any) -> bool:
    if not isinstance(request_key, str) or not isinstance(rule_key, str) or not request_key:
        return False
    return rule_key == WILDCARD or covers(rule_key, request_key)


def _same_or_any(request_value: Any, rule_value: Any) -> bool:
    if not isinstance(request_value, str) or not isinstance(rule_value, str) or not request_value:
        return False
    return rule_value == WILDCARD or rule_value == request_value


def _subject_self(principal: Any, role: Any) -> bool:
    """A data subject holds the data_subject role by being who they are, not by a binding."""
    return role == SUBJECT_ROLE and isinstance(principal, str) and bool(_SUBJECT.fullmatch(principal))


class _RecordingModel:
    """Stands in for a Casbin model while an adapter loads, to see every rule it yields.

    Casbin's ``load_policy_line`` silently skips lines whose type the model lacks (a
    mistyped ``P`` or ``p2``): recording them first lets the check refuse such a policy.
    """

    class _Any:
        def __contains__(self, item: object) -> bool:
            return True

    class _Sink:
        def __init__(self, rows: list[tuple[str, list[str]]], ptype: str) -> None:
            self._rows, self._ptype = rows, ptype

        def append(self, tokens: list[str]) -> None:
            self._rows.append((self._ptype, list(tokens)))

    class _Assertion:
        def __init__(self, policy: _RecordingModel._Sink) -> None:
            self.policy = policy

    class _Section:
        def __init__(self, rows: list[tuple[str, list[str]]]) -> None:
            self._rows = rows

        def keys(self) -> _RecordingModel._Any:
            return _RecordingModel._Any()

        def __getitem__(self, ptype: str) -> _RecordingModel._Assertion:
            return _RecordingModel._Assertion(_RecordingModel._Sink(self._rows, ptype))

    def __init__(self) -> None:
        self.rows: list[tuple[str, list[str]]] = []
        self.model = self

    def keys(self) -> _Any:
        return self._Any()

    def __getitem__(self, sec: str) -> _Section:
        return self._Section(self.rows)

    def add_policy(self, sec: str, ptype: str, rule: list[str]) -> bool:
        self.rows.append((ptype, list(rule)))
        return True


def _declared_definitions(model_path: Path) -> dict[str, set[str]]:
    """Definition keys per section as written in the model file (r, p, g, g2, e, m, ...)."""
    declared: dict[str, set[str]] = {}
    section = None
    for raw in model_path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = _SECTION_KEYS.get(line[1:-1].strip())
            if section is None:
                raise ConfigError(f"{model_path}: unknown section {line}; expected {', '.join(_SECTION_KEYS)}")
            declared.setdefault(section, set())
        elif "=" in line and section is not None:
            declared[section].add(line.split("=", 1)[0].strip())
    return declared


def _where(source: str, n: int) -> str:
    """``file:line`` of the n-th rule of a policy file (Casbin skips blank and # lines)."""
    path = Path(source)
    if path.is_file():
        lines = [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if line.strip() and not line.strip().startswith("#")]
        if n <= len(lines):
            return f"{source}:{lines[n - 1]}"
    return f"{source}: rule {n}"


#: The matcher :class:`_RuleIndex` implements (model.conf's, whitespace aside).
_INDEXED_MATCHER = (
    'r.role == p.role && under(r.cat, p.cat) && action_in(r.act, p.act) && under(r.purp, p.purp) && '
    'in_store(r.dom, p.dom) && (r.role != "data_subject" || r.sub == r.owner) && '
    '(subject_self(r.sub, r.role) || g(r.sub, r.role, r.dom))'
)


def _squeeze(text: str) -> str:
    """A matcher without whitespace, with Casbin's escaping (``r.role`` loads as ``r_role``) undone."""
    return re.sub(r"\b([rp])_(?=[a-z])", r"\1.", re.sub(r"\s+", "", text))


class _RuleIndex:
    """The loaded rules keyed by (role, store, category, action, purpose), in policy order.

    Why not Casbin's own evaluation: it runs the matcher expression once per candidate rule
    (a few dozen microseconds each) and builds a store's role graph on its first request, so an
    uncached decision over thousands of rules took up to a millisecond and more under load. The
    matcher is fixed (``_INDEXED_MATCHER``): every field is equal-or-``*`` or hierarchical,
    so the matching rules are found by lookups over the request's ancestors.

    The result replicates Casbin's ``enforce_ex`` under the allow-and-deny effect, per pass
    (the request's store, then ``*``): the first matching deny in policy order decides (and is
    named); else the last matching allow is named; else no rule. Role bindings are direct
    (principals and roles cannot be confused, see ``_PRINCIPAL``), in the store or in ``*``.
    """

    def __init__(self, policy: list[list[str]], bindings: list[list[str]]) -> None:
        self.rules: dict[tuple[str, str, str, str, str], list[int]] = {}
        self.policy = [tuple(row) for row in policy]
        for i, (role, store, category, action, purpose, _effect) in enumerate(self.policy):
            self.rules.setdefault((role, store, category, action, purpose), []).append(i)
        self.bindings = {tuple(b) for b in bindings}

    def holds(self, principal: str, role: str, store: str) -> bool:
        if _subject_self(principal, role):
            return True
        return (principal, role, store) in self.bindings or (principal, role, WILDCARD) in self.bindings

    def passes(self, r: AccessRequest) -> list[tuple[bool, tuple[str, ...]]]:
        """(allowed, rule) per pass, as ``enforce_ex`` gives them."""
        if not all(isinstance(v, str) and v for v in _as_tuple(r)):
            return [(False, ())]  # as the matching functions: an empty value never matches
        if (r.role == SUBJECT_ROLE and r.principal != r.owner) or not self.holds(r.principal, r.role, r.store):
            return [(False, ())]
        categories = [*ancestors(r.category), WILDCARD]
        purposes = [*ancestors(r.purpose), WILDCARD]
        actions = (r.action, WILDCARD)
        out = []
        for store in dict.fromkeys((r.store, WILDCARD)):
            matched: list[int] = []
            for category in categories:
                for action in actions:
                    for purpose in purposes:
                        hit = self.rules.get((r.role, store, category, action, purpose))
                        if hit:
                            matched.extend(hit)
            if not matched:
                out.append((False, ()))
                continue
            matched.sort()
            deny = next((i for i in matched if self.policy[i][5] == "deny"), None)
            if deny is not None:
                out.append((False, self.policy[deny]))
            else:
                allows = [i for i in matched if self.policy[i][5] == "allow"]
                out.append((bool(allows), self.policy[allows[-1]] if allows else ()))
        return out


class PolicyEnforcer:
    """Answers :class:`AccessRequest` questions; never answers yes by accident.

    ``adapter``: a Casbin adapter (e.g. ``sqlalchemy_adapter.Adapter(engine)``), a policy
    CSV path, or None for the shipped ``policy.csv``. Changes made through this object are
    saved through the adapter (the file adapter keeps them in memory only).
    """

    def __init__(
        self,
        adapter: Adapter | str | Path | None = None,
        *,
        model_path: Path = MODEL_PATH,
        roles_path: Path = ROLES_PATH,
        taxonomy: Taxonomy | None = None,
        cache_size: int = 10_000,
    ) -> None:
        if cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size}")
        if adapter is None:
            adapter = POLICY_PATH
        if isinstance(adapter, (str, Path)):
            path = Path(adapter)
            if not path.is_file():
                raise ConfigError(f"policy file {path} not found; pass an existing policy CSV")
            self._source = str(path)
            adapter = FileAdapter(str(path))
        else:
            if not isinstance(adapter, Adapter):
                raise ConfigError(f"adapter must be a Casbin adapter or a policy path, got {type(adapter).__name__}")
            self._source = f"{type(adapter).__module__}.{type(adapter).__name__}"
        self._adapter = adapter
        self._model_path = Path(model_path)
        self._taxonomy = taxonomy or load_taxonomy()
        self._vocab = load_vocabulary(roles_path)
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[Any, ...], Decision] = OrderedDict()
        self._cache_size = cache_size
        self._version = 0
        self._broken: str | None = None
        self.cache_hits = 0
        self.cache_misses = 0

        self._check_rules(self._read_rules())
        # FastEnforcer indexes rules by (role, store): evaluation walks only the rules of the
        # requested role in the requested store and in "*" (see _evaluate), not all of them.
        # Its FastModel keeps just the first definition of each model section, which
        # _check_model catches.
        if not self._model_path.is_file():
            raise ConfigError(f"model file {self._model_path} not found")
        try:
            self._casbin = casbin.FastEnforcer(str(self._model_path), adapter, cache_key_order=[0, 1])
        except Exception as exc:
            raise ConfigError(f"{self._model_path}: Casbin could not load the model and policy ({type(exc).__name__}: {exc})") from exc
        self._check_model()
        self._casbin.add_function("under", _under)
        self._casbin.add_function("in_store", _same_or_any)
        self._casbin.add_function("action_in", _same_or_any)
        self._casbin.add_function("subject_self", _subject_self)
        self._casbin.add_named_domain_matching_func("g", _same_or_any)
        self._check_loaded()
        self._indexable = _squeeze(self._casbin.get_model().model["m"]["m"].value) == _squeeze(_INDEXED_MATCHER)
        self._index: _RuleIndex | None = None
        self._index_version = -1

    # --- loading and checking --------------------------------------------------------------

    @property
    def version(self) -> int:
        """Bumped by every change to the policy made through this object."""
        return self._version

    def _read_rules(self) -> list[tuple[str, list[str]]]:
        return self._read_rules_from(self._adapter, self._source)

    @staticmethod
    def _read_rules_from(adapter: Adapter, source: str) -> list[tuple[str, list[str]]]:
        recorder = _RecordingModel()
        try:
            adapter.load_policy(recorder)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"policy source {source} could not be read ({type(exc).__name__}: {exc})") from exc
        return recorder.rows

    def _check_model(self) -> None:
        model = self._casbin.get_model().model
        declared = _declared_definitions(self._model_path)
        for sec, keys in declared.items():
            lost = keys - set(model.get(sec, {}).keys())
            if lost:
                raise ConfigError(
                    f"{self._model_path}: definitions {', '.join(sorted(lost))} were dropped while loading "
                    "(Casbin's FastEnforcer keeps one definition per section); remove them"
                )
        if {sec: set(keys) for sec, keys in declared.items()} != _MODEL_DEFINITIONS:
            raise ConfigError(
                f"{self._model_path}: the model must define exactly r, p, g, e and m (one each); "
                f"found {', '.join(sorted(k for keys in declared.values() for k in keys))}"
            )
        if model["r"]["r"].tokens != _REQUEST_TOKENS or model["p"]["p"].tokens != _POLICY_TOKENS:
            raise ConfigError(
                f"{self._model_path}: request must be (role, sub, dom, cat, act, purp, owner) and rules "
                "(role, dom, cat, act, purp, eft); the enforcer relies on these positions"
            )
        if not isinstance(self._casbin.eft, AllowAndDenyEffector):
            raise ConfigError(
                f"{self._model_path}: policy_effect must be "
                "'some(where (p.eft == allow)) && !some(where (p.eft == deny))' (default deny, deny wins)"
            )
        if "eval(" in model["m"]["m"].value:
            raise ConfigError(f"{self._model_path}: the matcher may not eval() text from policy rules")

    def _problem(self, ptype: str, tokens: list[str]) -> str | None:
        """Why a rule (as loaded, without its type) is invalid, or None."""
        if ptype == "p":
            if len(tokens) != 6:
                return f"a rule has 6 fields (role, store, category, action, purpose, effect), not {len(tokens)}"
            role, store, category, action, purpose, effect = tokens
            if role not in self._vocab.roles:
                return f"unknown role {role!r}"
            if store != WILDCARD and not _STORE.fullmatch(store):
                return f"store {store!r} is not * or a store id"
            if category != WILDCARD and not self._taxonomy.is_category(category):
                return f"unknown data category {category!r}"
            if action != WILDCARD and action not in self._vocab.actions:
                return f"unknown action {action!r}"
            if purpose != WILDCARD and not self._taxonomy.is_use(purpose):
                return f"unknown purpose {purpose!r}"
            if effect not in ("allow", "deny"):
                return f"effect must be allow or deny, not {effect!r}"
            return None
        if ptype == "g":
            if len(tokens) != 3:
                return f"a role binding has 3 fields (principal, role, store), not {len(tokens)}"
            principal, role, store = tokens
            if not _PRINCIPAL.fullmatch(principal) or principal.startswith("subject:"):
                return "the principal must be '<kind>:<name>' and not a data subject"
            if role not in self._vocab.roles or role == SUBJECT_ROLE:
                return f"role {role!r} cannot be bound (unknown, or held by identity)"
            if store != WILDCARD and not _STORE.fullmatch(store):
                return f"store {store!r} is not * or a store id"
            return None
        return f"unknown rule type {ptype!r} (expected p or g)"

    def _check_rules(self, rows: Iterable[tuple[str, list[str]]], *, source: str | None = None) -> None:
        source = source or self._source
        for n, (ptype, tokens) in enumerate(rows, start=1):
            problem = self._problem(ptype, tokens)
            if problem:
                shown = ", ".join([ptype, *tokens]) if ptype == "p" else f"{ptype}, ..."
                raise ConfigError(f"{_where(source, n)}: {shown}: {problem}; fix or remove it")

    def _check_loaded(self) -> None:
        """Casbin must hold exactly the rules the adapter yielded (nothing skipped)."""
        read = self._read_rules()
        self._check_rules(read)
        want_p = {tuple(t) for k, t in read if k == "p"}
        want_g = {tuple(t) for k, t in read if k == "g"}
        have_p = {tuple(r) for r in self._casbin.get_policy()}
        have_g = {tuple(r) for r in self._casbin.get_grouping_policy()}
        if want_p != have_p or want_g != have_g:
            raise ConfigError(f"{self._source}: Casbin loaded different rules than the source holds; refusing it")

    def reload(self) -> None:
        """Re-read the policy source (e.g. after another process changed the database).

        If the new policy fails the checks, every request is denied until a reload succeeds.
        """
        with self._lock:
            self._bump()
            try:
                self._check_rules(self._read_rules())
                self._casbin.load_policy()
                self._check_loaded()
            except Exception as exc:
                self._broken = f"policy failed to load ({type(exc).__name__})"
                raise ConfigError(f"{self._source}: reload refused, denying every request: {exc}") from exc
            self._broken = None

    def _bump(self) -> None:
        self._version += 1
        self._cache.clear()

    # --- changes -------------------------------------------------------------------------

    def _change(self, ptype: str, tokens: list[str], add: bool) -> bool:
        problem = self._problem(ptype, tokens)
        if problem:
            raise ConfigError(f"invalid {'rule' if ptype == 'p' else 'role binding'}: {problem}")
        with self._lock:
            self._bump()
            if ptype == "p":
                changed = self._casbin.add_policy(*tokens) if add else self._casbin.remove_policy(*tokens)
            else:
                changed = (
                    self._casbin.add_named_grouping_policy("g", *tokens)
                    if add
                    else self._casbin.remove_named_grouping_policy("g", *tokens)
                )
            return bool(changed)

    def add_rule(self, rule: PolicyRule) -> bool:
        return self._change("p", rule.as_casbin(), add=True)

    def remove_rule(self, rule: PolicyRule) -> bool:
        return self._change("p", rule.as_casbin(), add=False)

    def assign_role(self, principal: str, role: str, store: str) -> bool:
        return self._change("g", RoleBinding(principal, role, store).as_casbin(), add=True)

    def revoke_role(self, principal: str, role: str, store: str) -> bool:
        return self._change("g", RoleBinding(principal, role, store).as_casbin(), add=False)

    def import_policy(self, path: Path = POLICY_PATH) -> int:
        """Add the rules and bindings of a policy CSV not held yet (e.g. to seed a database).

        The file is checked whole first; returns the number of rules and bindings added.
        """
        rows = self._read_rules_from(FileAdapter(str(path)), str(path))
        self._check_rules(rows, source=str(path))
        added = 0
        with self._lock:
            self._bump()
            for ptype, tokens in rows:
                if ptype == "p":
                    added += bool(self._casbin.add_policy(*tokens))
                else:
                    added += bool(self._casbin.add_named_grouping_policy("g", *tokens))
        return added

    def rules(self) -> list[PolicyRule]:
        with self._lock:
            return [PolicyRule(*r) for r in self._casbin.get_policy()]

    def bindings(self) -> list[RoleBinding]:
        with self._lock:
            return [RoleBinding(*r) for r in self._casbin.get_grouping_policy()]

    # --- decisions -------------------------------------------------------------------------

    def _request_problem(self, request: AccessRequest) -> str | None:
        for f in fields(AccessRequest):
            value = getattr(request, f.name)
            if not isinstance(value, str) or not value.strip():
                return f"request lacks {f.name}"
        if request.role not in self._vocab.roles:
            return f"unknown role {request.role!r}"
        if not _PRINCIPAL.fullmatch(request.principal):
            return "principal is not a '<kind>:<name>' id"
        if not _STORE.fullmatch(request.store):
            return "store is not a store id"
        if not self._taxonomy.is_category(request.category):
            return f"unknown data category {request.category!r}"
        if request.action not in self._vocab.actions:
            return f"unknown action {request.action!r}"
        if not self._taxonomy.is_use(request.purpose):
            return f"unknown purpose {request.purpose!r}"
        if request.owner != STORE_OWNER and not _SUBJECT.fullmatch(request.owner):
            return "owner is neither 'store' nor a subject principal id"
        return None

    def _what(self, r: AccessRequest) -> str:
        return f"{r.role} to {r.action} {r.category} for {r.purpose} in store {r.store}"

    def decide(self, request: AccessRequest, *, use_cache: bool = True) -> Decision:
        """The decision for ``request``; never raises, denies on any doubt."""
        try:
            if not isinstance(request, AccessRequest):
                return Decision(False, "denied: not an AccessRequest", (), self._version)
            problem = self._request_problem(request)
            if problem:
                return Decision(False, f"denied: {problem}", (), self._version)
            with self._lock:
                if self._broken:
                    return Decision(False, f"denied: {self._broken}", (), self._version)
                key = (self._version, *_as_tuple(request))
                if use_cache and key in self._cache:
                    self._cache.move_to_end(key)
                    self.cache_hits += 1
                    return self._cache[key]
                self.cache_misses += 1
                decision = self._evaluate(request)
                if use_cache and self._cache_size:
                    self._cache[key] = decision
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
                return decision
        except Exception as exc:  # noqa: BLE001  fail closed, whatever went wrong
            log.error("policy evaluation failed (%s); denying", type(exc).__name__)
            return Decision(False, f"denied: policy evaluation failed ({type(exc).__name__})", (), self._version)

    def _rule_index(self) -> _RuleIndex:
        """The index of the policy as it is now (rebuilt after a change; called under the lock)."""
        if self._index is None or self._index_version != self._version:
            self._index = _RuleIndex(self._casbin.get_policy(), self._casbin.get_grouping_policy())
            self._index_version = self._version
        return self._index

    def _casbin_passes(self, r: AccessRequest) -> list[tuple[bool, tuple[str, ...]]]:
        """Casbin's own evaluation over the rules of (role, store) and (role, "*")."""
        policy = self._casbin.model.model["p"]["p"].policy
        outcomes: list[tuple[bool, tuple[str, ...]]] = []
        for store in dict.fromkeys((r.store, WILDCARD)):
            with fast_policy_filter(policy, r.role, store):
                allowed, rule = self._casbin.enforce_ex(*_as_tuple(r))
            outcomes.append((allowed is True, tuple(rule or ())))
        return outcomes

    def _evaluate(self, r: AccessRequest, *, casbin_only: bool = False) -> Decision:
        """Evaluate the rules for (role, store) and (role, "*"); a deny in either wins.

        Each pass is a full evaluation over a subset of the rules, so an allow from one pass
        never hides a deny from the other: the deny is looked for first. By the index, or by
        Casbin when the model is not the one the index implements (or ``casbin_only``).
        """
        try:
            if self._indexable and not casbin_only:
                outcomes = self._rule_index().passes(r)
            else:
                outcomes = self._casbin_passes(r)
        except Exception as exc:  # noqa: BLE001  any evaluation error is a deny
            log.error("policy evaluation failed for %s (%s); denying", self._what(r), type(exc).__name__)
            return Decision(False, f"denied: policy evaluation failed ({type(exc).__name__})", (), self._version)
        for allowed, rule in outcomes:
            if not allowed and rule and rule[-1] == "deny":
                return Decision(False, f"denied: rule ({', '.join(rule)})", rule, self._version)
        for allowed, rule in outcomes:
            if allowed and rule and rule[-1] == "allow":
                return Decision(True, f"allowed: rule ({', '.join(rule)})", rule, self._version)
        hint = ""
        if r.role == SUBJECT_ROLE and r.principal != r.owner:
            hint = " (a data subject reaches only their own data)"
        return Decision(False, f"denied: no rule allows {self._what(r)}{hint}", (), self._version)

    def check(self, request: AccessRequest) -> Decision:
        """The decision if allowed; raises :class:`AccessDenied` with the reason otherwise."""
        decision = self.decide(request)
        if decision.allowed is not True:
            raise AccessDenied(decision.reason, decision=decision)
        return decision

    def cache_clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __repr__(self) -> str:
        return f"PolicyEnforcer(source={self._source!r}, version={self._version})"
