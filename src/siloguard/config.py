"""Typed settings: one object, built once at each entry point and passed down.

Sources, strongest first: explicit arguments (CLI options, Flower run config),
environment variables (``SILOGUARD_`` prefix, ``__`` between section and field,
e.g. ``SILOGUARD_MODEL__DIM=64``), then the defaults below.

Flower's ``context.run_config`` uses flat kebab-case keys (``local-epochs``,
``split-date``); :meth:`Settings.from_run_config` turns those into this object at
the app boundary, and :meth:`Settings.to_run_config` does the reverse.
"""

from __future__ import annotations

import os

from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from siloguard.errors import ConfigError

__all__ = [
    "ApiSettings",
    "AuditSettings",
    "ComplianceSettings",
    "DataSettings",
    "DatabaseSettings",
    "DeploySettings",
    "FederationSettings",
    "KeySettings",
    "ModelSettings",
    "NotifySettings",
    "PrivacySettings",
    "Settings",
]

#: The sections of Settings, as they appear in run-config keys (``<section>.<field>``).
_SECTIONS = ("data", "model", "federation", "database", "audit", "privacy", "keys", "api", "compliance", "deploy")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(_Section):
    """Where the transactions come from and how they are cut into stores."""

    path: Path | None = Field(None, description="Online Retail CSV/CSV.gz; None = embedded sample")
    consent: Path | None = Field(
        None,
        description="consent records CSV imported when the run is prepared (policies/consent_io.py); "
        "None = the embedded sample's simulated records when path is None, else none",
    )
    split_date: date | None = Field(None, description="first test day; None = last test_weeks of the file")
    test_weeks: int = Field(4, ge=1, le=52)
    uk_stores: int = Field(4, ge=1, le=512, description="stores the home country is split into")
    min_store_customers: int = Field(30, ge=1, description="a country with fewer customers joins 'international'")


class ModelSettings(_Section):
    """Recommender size and local training."""

    dim: int = Field(32, ge=2, le=512)
    hidden: int = Field(16, ge=1, le=512)
    learning_rate: float = Field(2e-2, gt=0, le=1, description="collaborative part (item vectors, decoder)")
    repeat_learning_rate: float = Field(3e-3, gt=0, le=1, description="repeat head")
    user_learning_rate: float = Field(3e-3, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0)
    batch_size: int = Field(256, ge=1)
    local_epochs: int = Field(2, ge=1, le=100)
    cutoffs: int = Field(8, ge=1, le=200, description="training cutoffs inside the training period")
    cutoff_stride_days: int | None = Field(None, ge=1, description="days between cutoffs; None = the test horizon")
    holdout: float = Field(0.2, ge=0, lt=1, description="share of history hidden in co-purchase examples; 0 = none")
    max_history: int = Field(256, ge=1, description="most-bought past items a customer's bag holds")
    seed: int = 0


class PrivacySettings(_Section):
    """Customer-level DP-SGD in each store (Opacus) and the per-store budget.

    The privacy unit is one customer: one Opacus sample is all of a customer's
    examples in the store, customers are Poisson-sampled, and each customer's
    gradient is clipped to ``max_grad_norm`` before noise is added.
    """

    enabled: bool = True
    noise_multiplier: float | None = Field(
        None, gt=0,
        description="Gaussian noise std / clipping norm, fixed for every round; None = planned per store and round "
        "so that the run spends exactly `epsilon` (privacy/dp.py plan_noise)",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="per-customer clipping bound")
    repeat_max_grad_norm: float = Field(
        1.0, gt=0,
        description="per-customer clipping bound of the shared repeat head, clipped apart from the text map "
        "(local_repeat off; privacy/dp.py _RepeatGroup); with train_collaborative or train_item_biases the head "
        "is clipped with the rest at max_grad_norm and this bound is not used",
    )
    sample_rate: float = Field(0.1, gt=0, le=1, description="Poisson sampling rate of customers per step")
    epsilon: float | None = Field(
        None, gt=0,
        description="planned per-store budget (customer-level epsilon) the federation.rounds spend together; "
        "None = epsilon_cap",
    )
    epsilon_cap: float = Field(8.0, gt=0, description="per-store budget (customer-level epsilon): a hard stop")
    delta: float | None = Field(
        None, gt=0, lt=1, description="None = 1 / (10 x customers in the store), at most 1e-5"
    )
    accountant: Literal["rdp", "prv"] = "rdp"
    central: bool = Field(False, description="also add server-side DP (Flower fixed clipping): store-level")
    central_noise_multiplier: float = Field(1.0, gt=0)
    central_clipping_norm: float = Field(1.0, gt=0, description="bound on one store's update (L2)")
    central_delta: float = Field(1e-5, gt=0, lt=1)
    train_collaborative: bool = Field(
        False,
        description="also train the free item and decoder vectors under DP (225k noisy dims; off: the text map, "
        "and the repeat ranker)",
    )
    local_repeat: bool = Field(
        True,
        description="under DP, train the repeat ranker in each store without noise and keep it there (it never "
        "leaves the store); only the collaborative part is trained under DP and shared",
    )
    own_repeat_average: bool = Field(
        True,
        description="under DP, a store scores with the mean of its own repeat ranker (or item biases) over its "
        "rounds, and trains on from the last round's (weight averaging)",
    )
    own_item_biases: bool = Field(
        True,
        description="under DP with local_repeat off, the repeat ranker's per-item biases are the store's own "
        "(trained without noise on the shared head, kept in the store, never sent) while its head is trained "
        "under DP and shared",
    )
    collaborative_loss_weight: float = Field(
        1.0, gt=0, le=1,
        description="under DP, the weight of the new-items loss against the repeat loss in each customer's clipped "
        "gradient (how the clipping bound is shared between the two rankers)",
    )
    popularity_share: float = Field(
        0.2, ge=0, lt=1,
        description="under DP, each store releases its item popularity once per run (bounded per customer, "
        "Gaussian noise, charged to its ledger) as the prior on new items; its noise gives the release this share "
        "of the target's zCDP budget; 0 = no prior under DP (privacy/popularity.py)",
    )
    train_item_biases: bool = Field(
        False,
        description="also train the per-item popularity and repeat biases under DP (2 x items noisy dims; off: the "
        "store's own popularity prior stands in for them)",
    )


    @model_validator(mode="after")
    def _plan_or_fixed(self) -> PrivacySettings:
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(
                "set either epsilon (the noise is planned to spend it) or noise_multiplier (fixed noise), not both"
            )
        if self.train_item_biases and self.local_repeat and not self.train_collaborative:
            raise ValueError(
                "train_item_biases needs local_repeat off (or train_collaborative on): the fast DP path of the "
                "text map does not take per-customer gradients of the item biases"
            )
        if self.epsilon is not None and self.epsilon > self.epsilon_cap:
            raise ValueError(
                f"epsilon {self.epsilon} is above epsilon_cap {self.epsilon_cap}: lower the target or raise the cap"
            )
        return self

    @property
    def own_repeat(self) -> str | None:
        """What of the repeat ranker a DP store trains without noise and keeps: ``"all"``
        (``local_repeat``), its per-item biases (``"items"``, ``own_item_biases``), or nothing."""
        if self.local_repeat:
            return "all"
        return "items" if self.own_item_biases and not self.train_item_biases else None

    @property
    def target_epsilon(self) -> float:
        """What a planned run spends per store: ``epsilon``, else the cap."""
        return self.epsilon if self.epsilon is not None else self.epsilon_cap


class FederationSettings(_Section):
    """The federated run."""

    rounds: int = Field(7, ge=1, le=1000)
    fraction_train: float = Field(1.0, gt=0, le=1)
    keep_best_round: bool = Field(
        True,
        description="without DP, register the round that scored best on the stores' validation window "
        "(the training period's last horizon), not the last round",
    )
    min_stores: int = Field(2, ge=1)
    round_timeout: float = Field(600.0, gt=0)
    aggregator: Literal["fedavg", "trimmed-mean", "median"] = Field(
        "fedavg", description="how accepted updates are combined: Flower FedAvg, FedTrimmedAvg or FedMedian"
    )
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed-mean: share cut from each tail")
    max_update_norm: float | None = Field(
        None, gt=0, description="reject a store's update whose L2 norm (change to the global model) is above this"
    )
    outlier_factor: float | None = Field(
        100.0, gt=1,
        description="reject an update whose norm is above this many times the round's median (3+ updates); "
        "DP-noised updates of small and large stores can differ by 10x or more, so keep this well above that",
    )


class DatabaseSettings(_Section):
    """The SQL database: a SQLite file by default, PostgreSQL by URL in production."""

    url: str = Field(
        "sqlite:///siloguard.db",
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host:5432/db",
    )

    @field_validator("url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("use a sqlite:/// or postgresql+psycopg:// URL")
        return value


class AuditSettings(_Section):
    """The tamper-evident audit log: signing keys and how often tree heads are signed."""

    signing_key: Path = Field(
        Path("keys/audit-signing.key"),
        description="Ed25519 private key (PEM, mode 0600) from `siloguard audit keygen`; absent = heads on demand only",
    )
    public_key: Path = Field(Path("keys/audit-signing.pub"), description="the matching public key (PEM), for verification")
    head_every_events: int = Field(1000, ge=0, description="sign a tree head after this many new events; 0 = never automatically")
    head_every_seconds: int = Field(3600, ge=0, description="sign a tree head when the last is older than this; 0 = never automatically")


class KeySettings(_Section):
    """Where the stores' key material lives (master keys, pseudonym secrets, subject keys)."""

    root: Path = Field(
        Path("keys"),
        description="FileKeyStore directory (mode 0700); holds stores/<store>/... (privacy/keys.py)",
    )


class ApiSettings(_Section):
    """The privacy API (``siloguard serve``): where it listens and how it protects itself."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(16384, ge=256, description="larger request bodies are refused (413)")
    max_answer_bytes: int = Field(
        4_194_304, ge=4096, description="largest body a store may post with its part of an access answer (413 above)"
    )
    rate_per_key: str = Field("600/minute", description="requests per API key or subject token (limits syntax)")
    rate_per_ip: str = Field("300/minute", description="requests per client address (limits syntax)")
    rate_storage: str = Field(
        "memory://",
        description="where the rate limits count (a limits storage URI): memory:// = in the one server process "
        "(development); redis://HOST:6379/0 = shared by every worker and server (required for --workers above 1)",
    )
    rate_key_prefix: str = Field(
        "siloguard", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="prefix of the rate-limit counters in a shared storage (one per deployment sharing a Redis)",
    )
    workers: int = Field(1, ge=1, le=64, description="server processes (`siloguard serve --workers N`)")
    db_pool: int = Field(
        20, ge=1, le=200, description="PostgreSQL connections each server process keeps open (plus half as many more in a burst)"
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),  # a tuple: settings are hashable (cached per process)
        description="addresses or networks (e.g. 10.0.0.5, 10.0.0.0/24) of reverse proxies whose X-Forwarded-For / "
        "X-Forwarded-Proto are believed; empty = no proxy headers are used, the client is the connecting address",
    )
    max_headers: int = Field(100, ge=10, le=10000, description="requests with more header lines are refused (431)")
    max_header_bytes: int = Field(
        8192, ge=1024, description="requests whose header names and values total more bytes are refused (431)"
    )
    code_ttl_seconds: int = Field(900, ge=30, description="how long a one-time verification code is valid")
    code_attempts: int = Field(5, ge=1, le=20, description="wrong codes before a request is closed")
    session_ttl_seconds: int = Field(86400, ge=60, description="how long a verified subject's token is valid")
    claim_lease_seconds: int = Field(900, ge=30, description="how long a store's claim on an erasure task holds (the DPO cannot deny meanwhile)")
    answer_ttl_days: int = Field(30, ge=1, le=366, description="how long an access answer is kept for its subject after completion")
    default_jurisdiction: Literal["gdpr", "ccpa"] = Field(
        "gdpr", description="the law of stores whose run declares none (run.json 'jurisdictions'); requests never choose it"
    )
    resume_every_seconds: float = Field(5.0, gt=0, description="how often the server carries pending requests forward")


class NotifySettings(_Section):
    """How verification codes reach data subjects: the outbox (``dsr_outbox``) always, and an SMTP
    server when ``smtp_host`` is set (the API sends queued messages after their transaction commits)."""

    smtp_host: str | None = Field(None, description="SMTP server; None = leave messages in the outbox (siloguard outbox show)")
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_tls: Literal["starttls", "ssl", "none"] = Field(
        "starttls", description="starttls (refuse to send if the server does not offer it), ssl (TLS from the start) or none "
        "(only for a server on loopback)")
    smtp_ca_file: Path | None = Field(None, description="CA certificates to trust for the SMTP server; None = the system's")
    smtp_user: str | None = Field(None, description="login, if the server needs one")
    smtp_password: SecretStr | None = Field(None, description="password for smtp_user (SILOGUARD_NOTIFY__SMTP_PASSWORD)")
    sender: str = Field("privacy@localhost", description="From: address of the messages")
    contacts: Path | None = Field(
        None, description="CSV customer_ref,email: the addresses the stores hold (the service itself keeps none); "
        "a message for a customer not in it stays in the outbox")
    timeout_seconds: float = Field(15.0, gt=0, description="SMTP connection timeout")

    @model_validator(mode="after")
    def _no_clear_text_beyond_loopback(self) -> NotifySettings:
        """Codes and passwords never travel in clear over a network: smtp_tls none is for a server on loopback."""
        if self.smtp_host and self.smtp_tls == "none":
            if self.smtp_host not in ("127.0.0.1", "::1", "localhost"):
                raise ValueError(f"smtp_tls none sends codes in clear: only for a server on loopback, not {self.smtp_host}; "
                                 "use starttls or ssl")
            if self.smtp_user:
                raise ValueError("smtp_user with smtp_tls none would send the password in clear: use starttls or ssl")
        return self


class ComplianceSettings(_Section):
    """The GDPR/CCPA checks (``siloguard check``, the training pre-flight): files and clock."""

    as_of: Literal["data"] | datetime | None = Field(
        None,
        description="when the age of stored rows is measured: None = now, 'data' = the latest invoice "
        "in the stores (the data's own clock), or a date-time (docs/COMPLIANCE.md)",
    )
    rules: Path | None = Field(None, description="directory of rule files; None = siloguard/policies/rules")
    records: Path | None = Field(None, description="processing, DPIA and transfer records; None = siloguard/policies/records")
    datamaps: Path | None = Field(None, description="data maps; None = siloguard/policies/datamaps")


class DeploySettings(_Section):
    """A real deployment: the SuperLink's address, and where its key material and state live."""

    root: Path = Field(Path("deploy"), description="pki/, nodes/<store>/ (node keys), flwr/ (Flower CLI home), logs/")
    host: str = Field("127.0.0.1", description="address the SuperLink listens on and stores connect to")
    port: int = Field(9093, ge=1, le=65535, description="the SuperLink's HTTPS port (Fleet, Control and Runtime APIs)")
    connect_timeout: float = Field(60.0, gt=0, description="seconds a command waits for the SuperLink to answer")


class Settings(BaseSettings):
    """Everything a siloguard entry point needs."""

    model_config = SettingsConfigDict(
        env_prefix="SILOGUARD_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    federation: FederationSettings = FederationSettings()
    database: DatabaseSettings = DatabaseSettings()
    audit: AuditSettings = AuditSettings()
    privacy: PrivacySettings = PrivacySettings()
    keys: KeySettings = KeySettings()
    deploy: DeploySettings = DeploySettings()
    api: ApiSettings = ApiSettings()
    notify: NotifySettings = NotifySettings()
    compliance: ComplianceSettings = ComplianceSettings()
    work_dir: Path = Field(Path("runs/current"), description="silos, client state and outputs")

    @field_validator("work_dir")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value).strip() == "":
            raise ValueError("work_dir must not be empty")
        return value

    # ---- construction -------------------------------------------------
    @classmethod
    def build(cls, **overrides: Any) -> Settings:
        """Build from env + overrides; invalid values raise ConfigError naming the setting."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    def with_overrides(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections replaced (validated)."""
        data = self.model_dump()
        for section, values in sections.items():
            if isinstance(data.get(section), dict):
                data[section].update({k: v for k, v in values.items() if v is not None})
            elif values is not None:
                data[section] = values
        try:
            return type(self).model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    # ---- Flower boundary -------------------------------------------------
    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case keys, as Flower's run config carries them."""
        out: dict[str, bool | int | float | str] = {"work-dir": str(self.work_dir)}
        for section in _SECTIONS:
            for key, value in getattr(self, section).model_dump().items():
                if value is None:
                    continue
                out[f"{section}.{key.replace('_', '-')}"] = (
                    str(value) if isinstance(value, (Path, date)) else value
                )
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], *, store: bool = False, site: bool = False) -> Settings:
        """Inverse of :meth:`to_run_config`; unknown keys are an error, not ignored.

        With ``store=True`` (a store's ClientApp) the store's own environment wins over the run
        config for everything that belongs to the store's site (:data:`STORE_LOCAL`: its
        database, keys, audit keys, data files, work directory): the coordinator's run config
        is only a fallback for a store that sets none (the one-machine ``flwr run .``), never
        an override. Otherwise every store would write its consent, ledger and audit events
        into the coordinator's database. With ``site=True`` (a store running on its own site,
        :mod:`siloguard.clients.site`) the run config's store-local keys are ignored altogether:
        the store's environment, then its site, decide them.
        """
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        top: dict[str, Any] = {}
        for key, value in run_config.items():
            if value == "":
                continue
            if store and (_set_by_store(key) or (site and _store_local(key))):
                continue
            if key == "work-dir":
                top["work_dir"] = value
                continue
            section, _, field = key.partition(".")
            if section not in sections or not field:
                raise ConfigError(
                    f"unknown run-config key {key!r}: use 'work-dir' or "
                    "'<" + "|".join(_SECTIONS) + ">.<setting>' (see siloguard train --help)"
                )
            sections[section][field.replace("-", "_")] = value
        return cls.build(**top, **{k: v for k, v in sections.items() if v})


#: Run-config keys (or whole sections) that belong to a store's site, not to the federation.
STORE_LOCAL: tuple[str, ...] = ("work-dir", "database", "keys", "audit", "deploy", "data.path", "data.consent")


def _store_local(key: str) -> bool:
    return key in STORE_LOCAL or key.partition(".")[0] in STORE_LOCAL


def _set_by_store(key: str) -> bool:
    """Whether the store's environment sets this store-local run-config key itself."""
    section, _, field = key.partition(".")
    if not _store_local(key):
        return False
    if key == "work-dir":
        names = ["SILOGUARD_WORK_DIR"]
    else:
        names = [f"SILOGUARD_{section.upper()}__{field.replace('-', '_').upper()}"]
    return any(name in os.environ for name in names)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{where}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
