"""The shipped access policy as data, the enforcer's fail-closed behaviour, Casbin pitfalls."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import sqlalchemy
import sqlalchemy_adapter

from siloguard.errors import AccessDenied, ConfigError
from siloguard.policies.datamap import load_datamaps
from siloguard.policies.enforcer import (
    MODEL_PATH,
    POLICY_PATH,
    AccessRequest,
    PolicyEnforcer,
    PolicyRule,
    _same_or_any,
    _subject_self,
    _under,
)
from siloguard.policies.taxonomy import ancestors, covers, load_taxonomy

UK, DE = "united-kingdom-1", "germany"
TARGETED = "marketing.advertising.first_party.targeted"
LEGAL = "essential.legal_obligation"
ME, OTHER = "subject:17850", "subject:17851"

# The intended policy, written out independently of policy.csv: (role, store, category,
# action, purpose). A key covers the keys below it; "*" is any.
ALLOW = [
    ("store_trainer", "*", "user.behavior.purchase_history", "train", "personalize"),
    ("store_trainer", "*", "user.unique_id", "train", "personalize"),
    ("store_operator", "*", "user", "read", "essential.service"),
    ("store_operator", "*", "user", "read", "analytics.reporting"),
    ("store_operator", "*", "user.behavior.purchase_history", "read", TARGETED),
    ("store_operator", "*", "user.unique_id", "read", TARGETED),
    ("store_operator", "*", "user.unique_id", "export", TARGETED),
    ("store_operator", "*", "user.name", "export", TARGETED),
    ("store_operator", "*", "user.contact.email", "export", TARGETED),
    ("store_operator", "*", "user.contact.address.city", "export", TARGETED),
    ("store_operator", "*", "user.contact.address.country", "export", TARGETED),
    ("store_operator", "*", "user", "erase", LEGAL),
    # recommendations, profiles and lifetime value for the store's staff (clients/marketing.py)
    ("store_operator", "*", "user.behavior.purchase_history", "read", "personalize.profiling"),
    ("store_operator", "*", "user.unique_id", "read", "personalize.profiling"),
    ("compliance_officer", "*", "user.unique_id", "read", LEGAL),
    ("compliance_officer", "*", "user.privacy_preferences", "read", LEGAL),
    ("dpo", "*", "user", "read", LEGAL),
    ("dpo", "*", "user", "export", LEGAL),
    ("dpo", "*", "user", "erase", LEGAL),
    ("api_service", "*", "user.unique_id", "read", LEGAL),
    ("api_service", "*", "user.privacy_preferences", "read", LEGAL),
    ("data_subject", "*", "user", "read", LEGAL),
    ("data_subject", "*", "user", "export", LEGAL),
    ("data_subject", "*", "user", "erase", LEGAL),
    # the privacy API (siloguard.api.auth.OPERATIONS)
    ("data_subject", "*", "user.privacy_preferences", "submit", LEGAL),
    ("data_subject", "*", "user.privacy_preferences", "review", LEGAL),
    ("api_service", "*", "user.privacy_preferences", "submit", LEGAL),
    ("compliance_officer", "*", "user.privacy_preferences", "review", LEGAL),
    ("dpo", "*", "user.privacy_preferences", "review", LEGAL),
    ("dpo", "*", "user.privacy_preferences", "decide", LEGAL),
    ("store_operator", "*", "user", "fulfil", LEGAL),
]
DENY = [
    ("store_trainer", "*", "user.contact", "*", "*"),
    ("store_trainer", "*", "user.name", "*", "*"),
    ("store_trainer", "*", "user.demographic", "*", "*"),
    ("store_operator", "*", "user.financial", "*", "*"),
    ("store_operator", "*", "user.demographic", "export", "*"),
    ("store_operator", DE, "user.contact.email", "export", "*"),
]
# (principal, role, store of the binding)
BINDINGS = [
    ("client:uk1", "store_trainer", UK),
    ("staff:op", "store_operator", UK),
    ("staff:op", "store_operator", DE),
    ("staff:co", "compliance_officer", UK),
    ("staff:dpo", "dpo", "*"),
    ("service:api", "api_service", "*"),
]
PRINCIPAL = {role: principal for principal, role, _ in BINDINGS} | {"data_subject": ME}
ACTIONS = ["read", "export", "train", "erase", "submit", "review", "decide", "fulfil"]


def _matrix_keys() -> tuple[list[str], list[str]]:
    """Categories and purposes named by the policy and the data maps, their parents, and
    the taxonomy keys right below them, plus purposes the policy never names."""
    tax = load_taxonomy()
    named_cats = {r[2] for r in ALLOW + DENY}
    named_uses = {r[4] for r in ALLOW + DENY} - {"*"}
    for datamap in load_datamaps().values():
        named_cats |= {c.category for c in datamap.columns.values()}
        named_uses |= set(datamap.lawful_bases)
    cats = {a for k in named_cats for a in ancestors(k)}
    cats |= {k for k in tax.data_categories if k.rpartition(".")[0] in named_cats}
    uses = {a for k in named_uses for a in ancestors(k)}
    uses |= {k for k in tax.data_uses if k.rpartition(".")[0] in named_uses}
    uses |= {"train_ai_system", "marketing.communications.email", "third_party_sharing"}
    cats |= {"system.operations"}
    return sorted(cats), sorted(uses)


def _rule_matches(rule: tuple[str, ...], role: str, store: str, cat: str, act: str, purp: str) -> bool:
    r_role, r_store, r_cat, r_act, r_purp = rule
    return (
        r_role == role
        and r_store in ("*", store)
        and (r_cat == "*" or covers(r_cat, cat))
        and r_act in ("*", act)
        and (r_purp == "*" or covers(r_purp, purp))
    )


def expected(role: str, store: str, cat: str, act: str, purp: str, owner: str) -> bool:
    if role == "data_subject":
        if owner != ME:
            return False
    elif not any(p == PRINCIPAL[role] and r == role and s in ("*", store) for p, r, s in BINDINGS):
        return False
    return any(_rule_matches(r, role, store, cat, act, purp) for r in ALLOW) and not any(
        _rule_matches(r, role, store, cat, act, purp) for r in DENY
    )


@pytest.fixture(scope="module")
def shipped() -> PolicyEnforcer:
    enforcer = PolicyEnforcer()
    for principal, role, store in BINDINGS:
        enforcer.assign_role(principal, role, store)
    return enforcer


def request(role: str, store: str, cat: str, act: str, purp: str, owner: str = "store") -> AccessRequest:
    return AccessRequest(role, PRINCIPAL[role], store, cat, act, purp, owner)


def test_when_every_role_action_purpose_category_asked_then_only_expected_allows_pass(shipped: PolicyEnforcer) -> None:
    cats, uses = _matrix_keys()
    roles = sorted(PRINCIPAL)
    wrong = []
    n = allowed = 0
    for role, store, cat, act, purp in itertools.product(roles, (UK, DE), cats, ACTIONS, uses):
        owners = (ME, OTHER, "store") if role == "data_subject" else ("store",)
        for owner in owners:
            want = expected(role, store, cat, act, purp, owner)
            got = shipped.decide(request(role, store, cat, act, purp, owner), use_cache=False)
            n += 1
            allowed += want
            if got.allowed is not want:
                wrong.append(f"{role} {store} {cat} {act} {purp} owner={owner}: want {want}, got {got.reason}")
    assert not wrong, f"{len(wrong)} of {n} decisions differ from the spec:\n" + "\n".join(wrong[:20])
    assert n > 10_000 and allowed > 300  # the matrix really covers the allowed space


def test_when_every_rule_in_the_spec_then_policy_file_holds_exactly_those(shipped: PolicyEnforcer) -> None:
    rules = {(r.role, r.store, r.category, r.action, r.purpose, r.effect) for r in shipped.rules()}
    assert rules == {(*r, "allow") for r in ALLOW} | {(*r, "deny") for r in DENY}


@pytest.mark.parametrize(
    ("req", "reason"),
    [
        (request("store_trainer", UK, "user.behavior.purchase_history", "train", "personalize.profiling"), "allowed: rule (store_trainer, *, user.behavior.purchase_history"),
        (request("store_trainer", UK, "user.contact.email", "train", "personalize.profiling"), "denied: rule (store_trainer, *, user.contact, *, *, deny)"),
        (request("store_operator", DE, "user.contact.email", "export", TARGETED), "denied: rule (store_operator, germany, user.contact.email"),
        (request("store_operator", UK, "user.contact.email", "export", TARGETED), "allowed"),
        (request("store_trainer", DE, "user.unique_id", "train", "personalize.profiling"), "denied: no rule allows store_trainer to train user.unique_id"),
    ],
)
def test_when_deny_and_allow_both_match_then_deny_wins_and_reason_names_the_rule(shipped: PolicyEnforcer, req: AccessRequest, reason: str) -> None:
    assert shipped.decide(req).reason.startswith(reason)


def test_when_check_denied_then_access_denied_carries_reason_but_no_principal(shipped: PolicyEnforcer) -> None:
    with pytest.raises(AccessDenied) as info:
        shipped.check(AccessRequest("data_subject", ME, UK, "user.name", "read", LEGAL, OTHER))
    assert info.value.exit_code == 5
    assert "own data" in str(info.value)
    assert "17850" not in str(info.value) and "17851" not in str(info.value)
    assert info.value.decision.allowed is False
    assert shipped.check(AccessRequest("data_subject", ME, UK, "user.name", "read", LEGAL, ME)).allowed


# --- cache and changes --------------------------------------------------------------------


def test_when_rule_removed_or_role_revoked_then_cached_allow_is_not_reused() -> None:
    enforcer = PolicyEnforcer()
    enforcer.assign_role("client:uk1", "store_trainer", UK)
    req = request("store_trainer", UK, "user.unique_id", "train", "personalize.profiling")
    assert enforcer.decide(req).allowed and enforcer.decide(req).allowed
    assert enforcer.cache_hits == 1
    version = enforcer.version
    assert enforcer.remove_rule(PolicyRule("store_trainer", "*", "user.unique_id", "train", "personalize", "allow"))
    assert enforcer.version > version
    assert not enforcer.decide(req).allowed
    enforcer.add_rule(PolicyRule("store_trainer", "*", "user.unique_id", "train", "personalize", "allow"))
    assert enforcer.decide(req).allowed
    enforcer.revoke_role("client:uk1", "store_trainer", UK)
    assert not enforcer.decide(req).allowed


def test_when_invalid_rule_added_through_api_then_refused_and_policy_unchanged() -> None:
    enforcer = PolicyEnforcer()
    before = enforcer.rules()
    with pytest.raises(ConfigError, match="unknown data category"):
        enforcer.add_rule(PolicyRule("store_trainer", "*", '"user"', "train", "*", "allow"))
    with pytest.raises(ConfigError, match="cannot be bound"):
        enforcer.assign_role("staff:x", "data_subject", UK)
    with pytest.raises(ConfigError, match="not a data subject"):
        enforcer.assign_role("subject:17850", "dpo", "*")
    assert enforcer.rules() == before


# --- Casbin pitfalls: each ends in deny (or in a policy that does not load) ---------------


def _policy_file(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text(POLICY_PATH.read_text() + extra + "\n")
    return path


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        # a deny rule whose category is quoted would never match: deny silently lost
        ('p, store_operator, *, "user.contact.email", export, *, deny', "unknown data category '\"user.contact.email\"'"),
        ("p, store_operator, *, 'user.contact', export, *, deny", "unknown data category"),
        # matcher text in a rule field is never evaluated, and is refused
        ('p, api_service, *, user, read, "r.sub == r.sub || true", allow', "unknown purpose"),
        ("p, api_service, *, r.cat, read, essential.service, allow", "unknown data category 'r.cat'"),
        ("p, store_operator, *, user.financial, *, *, Deny", "effect must be allow or deny"),
        ("p, store_operator, *, user.financial, *, *", "6 fields"),
        ("p, store_operator, *, user.financial, *, *, deny, allow", "6 fields"),
        ("p2, store_operator, *, user.financial, *, *, deny", "unknown rule type 'p2'"),
        ("P, store_operator, *, user.financial, *, *, deny", "unknown rule type 'P'"),
        ("p, store_operator, *, user.*, read, *, allow", "unknown data category 'user.*'"),
        ("g, dpo, dpo, *", "principal must be"),
    ],
)
def test_when_policy_rule_holds_quoted_or_matcher_text_then_policy_is_refused(tmp_path: Path, line: str, problem: str) -> None:
    path = _policy_file(tmp_path, line)
    n_line = len(path.read_text().splitlines())
    with pytest.raises(ConfigError, match=f"policy.csv:{n_line}: .*{problem}"[:200].replace("(", r"\(").replace("|", r"\|")):
        PolicyEnforcer(path)


def test_when_model_evals_policy_text_then_model_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    model.write_text(MODEL_PATH.read_text().replace("m = r.role == p.role &&", "m = eval(p.purp) || r.role == p.role &&"))
    with pytest.raises(ConfigError, match="may not eval"):
        PolicyEnforcer(model_path=model)


@pytest.mark.parametrize(
    ("section_line", "added"),
    [
        ("g = _, _, _", "g = _, _, _\ng2 = _, _"),  # extra role definition (FastModel keeps only g)
        ("r = role, sub, dom, cat, act, purp, owner", "r = role, sub, dom, cat, act, purp, owner\nr2 = sub, obj, act"),
    ],
)
def test_when_model_has_extra_definitions_then_fast_enforcer_load_is_refused(tmp_path: Path, section_line: str, added: str) -> None:
    model = tmp_path / "model.conf"
    text = MODEL_PATH.read_text().replace(section_line, added)
    # the extra role definition is used as a deny clause; if it were silently dropped the
    # clause would vanish with it
    text = text.replace("&& (subject_self(", "&& !g2(r.sub, 'blocked') && (subject_self(") if "g2" in added else text
    model.write_text(text)
    with pytest.raises(ConfigError, match="dropped while loading"):
        PolicyEnforcer(model_path=model)


def test_when_model_effect_is_deny_override_then_model_is_refused(tmp_path: Path) -> None:
    # "!some(where (p.eft == deny))" alone allows every request no rule denies
    model = tmp_path / "model.conf"
    model.write_text(MODEL_PATH.read_text().replace("e = some(where (p.eft == allow)) && !some(where (p.eft == deny))", "e = !some(where (p.eft == deny))"))
    with pytest.raises(ConfigError, match="policy_effect"):
        PolicyEnforcer(model_path=model)


def test_when_role_has_no_rules_then_casbin_empty_policy_branch_denies(tmp_path: Path) -> None:
    # With no rule left after FastEnforcer's filter, Casbin evaluates the matcher once with
    # every rule field empty and allows if it is true: the matcher must be false then.
    path = tmp_path / "only_dpo.csv"
    path.write_text("p, dpo, *, user, read, essential.legal_obligation, allow\n")
    enforcer = PolicyEnforcer(path)
    enforcer.assign_role("service:api", "api_service", "*")
    for role, principal in (("api_service", "service:api"), ("data_subject", ME), ("store_trainer", "client:uk1")):
        decision = enforcer.decide(AccessRequest(role, principal, UK, "user.unique_id", "read", LEGAL, ME if role == "data_subject" else "store"))
        assert decision.allowed is False and "no rule allows" in decision.reason


def test_when_policy_is_empty_then_everything_is_denied(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("# nothing\n")
    enforcer = PolicyEnforcer(path)
    assert not enforcer.decide(AccessRequest("data_subject", ME, UK, "user", "read", LEGAL, ME)).allowed


@pytest.mark.parametrize("field", ["role", "principal", "store", "category", "action", "purpose", "owner"])
@pytest.mark.parametrize("missing", [None, "", "   "])
def test_when_request_attribute_missing_then_denied(shipped: PolicyEnforcer, field: str, missing: object) -> None:
    values = {"role": "dpo", "principal": "staff:dpo", "store": UK, "category": "user.name", "action": "read", "purpose": LEGAL, "owner": "store"}
    assert shipped.decide(AccessRequest(**values)).allowed  # the complete request is allowed
    values[field] = missing
    decision = shipped.decide(AccessRequest(**values))
    assert decision.allowed is False
    assert decision.reason == f"denied: request lacks {field}"


def test_when_empty_attribute_reaches_casbin_then_matching_functions_refuse_it(shipped: PolicyEnforcer) -> None:
    # below the request check: Casbin itself must not match empty values against empty or
    # wildcard rule fields
    assert _under("", "") is False and _under("", "*") is False and _under("user", "") is False
    assert _same_or_any("", "*") is False and _same_or_any("", "") is False
    assert _subject_self("subject:", "data_subject") is False and _subject_self("", "data_subject") is False
    for field in ("category", "action", "purpose", "store"):
        values = {"role": "dpo", "principal": "staff:dpo", "store": UK, "category": "user.name", "action": "read", "purpose": LEGAL, "owner": "store"}
        values[field] = ""
        assert shipped._evaluate(AccessRequest(**values)).allowed is False
        assert shipped._evaluate(AccessRequest(**values), casbin_only=True).allowed is False


def test_when_principal_is_named_like_a_role_then_request_is_denied(shipped: PolicyEnforcer) -> None:
    # Casbin's g(x, x) is true: a principal called "dpo" would hold the dpo role unbound
    assert not shipped.decide(AccessRequest("dpo", "dpo", UK, "user", "read", LEGAL)).allowed


@pytest.mark.parametrize("where", ["casbin", "index"])
def test_when_evaluation_raises_then_denied(shipped: PolicyEnforcer, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("matcher exploded")

    if where == "casbin":
        monkeypatch.setattr(shipped, "_indexable", False)
        monkeypatch.setattr(shipped._casbin, "enforce_ex", boom)
    else:
        from siloguard.policies.enforcer import _RuleIndex

        monkeypatch.setattr(_RuleIndex, "passes", boom)
    decision = shipped.decide(request("dpo", UK, "user.name", "erase", LEGAL), use_cache=False)
    assert decision.allowed is False and "policy evaluation failed (RuntimeError)" in decision.reason


def test_when_unknown_values_requested_then_denied_not_raised(shipped: PolicyEnforcer) -> None:
    for req in (
        request("dpo", UK, "user.names", "read", LEGAL),
        request("dpo", UK, "user.name", "delete", LEGAL),
        request("dpo", UK, "user.name", "read", "legal"),
        AccessRequest("root", "staff:dpo", UK, "user", "read", LEGAL),
        "not a request",
    ):
        assert shipped.decide(req).allowed is False  # type: ignore[arg-type]


# --- policies in a database (sqlalchemy-adapter, SQLite) ----------------------------------


def _sqlite_adapter(tmp_path: Path) -> sqlalchemy_adapter.Adapter:
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    return sqlalchemy_adapter.Adapter(engine)


def test_when_policy_lives_in_sqlite_then_decisions_match_the_file(tmp_path: Path, shipped: PolicyEnforcer) -> None:
    empty = PolicyEnforcer(_sqlite_adapter(tmp_path))
    assert not empty.decide(request("dpo", UK, "user", "read", LEGAL)).allowed  # no rules yet: deny
    assert empty.import_policy(POLICY_PATH) == len(ALLOW) + len(DENY)
    for principal, role, store in BINDINGS:
        empty.assign_role(principal, role, store)

    reopened = PolicyEnforcer(_sqlite_adapter(tmp_path))  # rules and bindings were saved
    cats, uses = _matrix_keys()
    for role, cat, act, purp in itertools.product(sorted(PRINCIPAL), cats[::3], ACTIONS, uses[::3]):
        owner = ME if role == "data_subject" else "store"
        req = request(role, DE, cat, act, purp, owner)
        assert reopened.decide(req).allowed is shipped.decide(req).allowed, req


def test_when_database_gains_a_bad_rule_then_reload_refuses_and_denies_everything(tmp_path: Path) -> None:
    adapter = _sqlite_adapter(tmp_path)
    enforcer = PolicyEnforcer(adapter)
    enforcer.import_policy(POLICY_PATH)
    enforcer.assign_role("staff:dpo", "dpo", "*")
    req = request("dpo", UK, "user", "read", LEGAL)
    assert enforcer.decide(req).allowed
    adapter.add_policy("p", "p", ["store_operator", "*", '"user.contact"', "export", "*", "deny"])  # written behind its back
    with pytest.raises(ConfigError, match="unknown data category"):
        enforcer.reload()
    decision = enforcer.decide(req)
    assert decision.allowed is False and "policy failed to load" in decision.reason
    with pytest.raises(ConfigError, match="unknown data category"):
        PolicyEnforcer(_sqlite_adapter(tmp_path))


# ---- the rule index against Casbin's own evaluation --------------------------------------


def test_when_random_policies_are_asked_random_questions_then_the_index_answers_as_casbin_does(tmp_path: Path) -> None:
    """The index replaces Casbin's per-rule matcher evaluation: on random policies (allow and
    deny, wildcards and parent keys, bindings in a store or in *) and random requests (data
    subjects asking for themselves and for others included), the decision, its reason and the
    rule it names are Casbin's, request for request."""
    import random

    from siloguard.policies.enforcer import load_vocabulary

    rng = random.Random(17)
    tax = load_taxonomy()
    vocab = load_vocabulary()
    cats = [*sorted(tax.data_categories)[:40], "user", "user.behavior", "*"]
    uses = [*sorted(tax.data_uses)[:30], "marketing", "personalize", "*"]
    roles = sorted(vocab.roles)
    actions = [*sorted(vocab.actions), "*"]
    stores = ["s1", "s2", "s3", "*"]
    principals = ["staff:a", "staff:b", "client:c"]
    checked = 0
    for trial in range(3):
        lines = [f"p, {rng.choice(roles)}, {rng.choice(stores)}, {rng.choice(cats)}, {rng.choice(actions)}, "
                 f"{rng.choice(uses)}, {rng.choice(['allow', 'allow', 'deny'])}" for _ in range(300)]
        lines += [f"g, {p}, {rng.choice([r for r in roles if r != 'data_subject'])}, {rng.choice(stores)}"
                  for p in principals for _ in range(3)]
        path = tmp_path / f"policy-{trial}.csv"
        path.write_text("\n".join(dict.fromkeys(lines)) + "\n")
        enforcer = PolicyEnforcer(path, cache_size=0)
        for _ in range(300):
            role = rng.choice(roles)
            if role == "data_subject":
                principal = rng.choice([ME, OTHER])
                owner = rng.choice([ME, OTHER, "store"])
            else:
                principal, owner = rng.choice(principals), "store"
            request = AccessRequest(role, principal, rng.choice(stores[:3]), rng.choice([c for c in cats if c != "*"]),
                                    rng.choice([a for a in actions if a != "*"]), rng.choice([u for u in uses if u != "*"]), owner)
            assert enforcer.decide(request, use_cache=False) == enforcer._evaluate(request, casbin_only=True), request
            checked += 1
        # a change through the enforcer rebuilds the index
        rule = PolicyRule(*[t.strip() for t in lines[0].split(",")[1:]])
        enforcer.remove_rule(rule)
        for _ in range(50):
            request = AccessRequest(rule.role, rng.choice(principals) if rule.role != "data_subject" else ME,
                                    rule.store if rule.store != "*" else "s1", rule.category if rule.category != "*" else "user",
                                    rule.action if rule.action != "*" else "read", rule.purpose if rule.purpose != "*" else "marketing", "store" if rule.role != "data_subject" else ME)
            assert enforcer.decide(request, use_cache=False) == enforcer._evaluate(request, casbin_only=True), request
    assert checked == 900


def test_a_model_with_another_matcher_is_evaluated_by_casbin_not_the_index(tmp_path: Path) -> None:
    model = tmp_path / "model.conf"
    text = MODEL_PATH.read_text().replace("action_in(r.act, p.act) && ", "action_in(r.act, p.act) && r.act != \"erase\" && ")
    assert text != MODEL_PATH.read_text()
    model.write_text(text)
    enforcer = PolicyEnforcer(model_path=model)
    enforcer.assign_role("staff:dpo", "dpo", "*")
    erase = AccessRequest("dpo", "staff:dpo", UK, "user.name", "erase", LEGAL)
    assert not enforcer.decide(erase).allowed  # the index would allow it: Casbin's evaluation of this model does not
    shipped = PolicyEnforcer()
    shipped.assign_role("staff:dpo", "dpo", "*")
    assert shipped.decide(erase).allowed
