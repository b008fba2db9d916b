"""`siloguard train` refuses bad input with one line naming the problem, writing nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_tiny_retail


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "siloguard.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"},
    )


def _variant(tmp_path: Path, change) -> Path:
    frame = pd.read_csv(write_tiny_retail(tmp_path / "base.csv"), dtype=str)
    path = tmp_path / "input.csv"
    change(frame).to_csv(path, index=False)
    return path


def _drop_description(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["Description"])


def _bad_date(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[5, "InvoiceDate"] = "31st of Smarch"
    return frame


def _guests_only(frame: pd.DataFrame) -> pd.DataFrame:
    frame["CustomerID"] = ""
    return frame


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_drop_description, "Description"),
        (_bad_date, "InvoiceDate"),
        (_guests_only, "no customers"),
    ],
    ids=["missing-column", "unreadable-date", "no-customers"],
)
def test_when_train_gets_bad_input_then_one_line_error_and_nothing_written(
    tmp_path: Path, change, expected: str
) -> None:
    data = _variant(tmp_path, change)
    out = tmp_path / "out"

    result = _run("train", "--data", str(data), "--out", str(out))

    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and expected in lines[0]
    assert "Smarch" not in lines[0]  # the offending value (possibly personal data) is not echoed
    assert not out.exists()


def test_when_split_date_is_malformed_then_config_error(tmp_path: Path) -> None:
    data = write_tiny_retail(tmp_path / "ok.csv")
    result = _run("train", "--data", str(data), "--split-date", "2011-13-01", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "--split-date" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--noise-multiplier", "0"], {}, "noise_multiplier"),
        (["--epsilon-cap", "0"], {}, "epsilon_cap"),
        ([], {"SILOGUARD_PRIVACY__DELTA": "1"}, "delta"),
        ([], {"SILOGUARD_PRIVACY__MAX_GRAD_NORM": "0"}, "max_grad_norm"),
    ],
    ids=["noise-zero", "cap-zero", "delta-one", "clipping-zero"],
)
def test_when_privacy_settings_are_invalid_then_train_stops_before_reading_data(tmp_path: Path, args, env, expected) -> None:
    missing = tmp_path / "does-not-exist.csv"  # would be a DataError (exit 3) if it were read first
    result = subprocess.run(
        [sys.executable, "-m", "siloguard.cli", "train", "--data", str(missing), "--out", str(tmp_path / "o"), *args],
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200", **env},
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert not (tmp_path / "o").exists()


def test_version_exit_codes_and_model_commands_on_a_run_root(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from siloguard import __version__
    from siloguard.cli import app

    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"siloguard {__version__}"
    assert "Exit codes:" in runner.invoke(app, ["--help"]).output
    missing = runner.invoke(app, ["model", "list", "--out", str(tmp_path / "nothere")])
    assert missing.exit_code == 2 and "no such run" in missing.output
    (tmp_path / "run" / "coordinator").mkdir(parents=True)
    empty = runner.invoke(app, ["model", "show", "--out", str(tmp_path / "run")])
    assert empty.exit_code == 2 and "coordinator" in empty.output  # the run root resolves to its coordinator


def test_train_without_consent_is_refused_before_the_simulation_engine_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from siloguard.cli import app

    for name in ("SILOGUARD_DATABASE__URL", "SILOGUARD_KEYS__ROOT", "SILOGUARD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    retail = write_tiny_retail(tmp_path / "tiny.csv")
    result = CliRunner().invoke(app, ["train", "--data", str(retail), "--out", str(tmp_path / "run"), "--stores", "1"])
    from siloguard.errors import ConfigError

    assert isinstance(result.exception, ConfigError) and result.exception.exit_code == 2  # main() exits with it
    assert "has a live consent" in str(result.exception) and "--consent FILE" in str(result.exception)
    assert "Federated training" not in result.output  # nothing started


def test_a_campaign_names_exactly_one_target(tmp_path: Path) -> None:
    from siloguard.clients.campaign import campaign_list
    from siloguard.config import Settings
    from siloguard.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one target"):
        campaign_list(Settings.build(work_dir=tmp_path), "france")
    with pytest.raises(ConfigError, match="not both"):
        campaign_list(Settings.build(work_dir=tmp_path), "france", segment="champions", item="SKU001")


def test_model_show_summarises_and_json_gives_the_whole_manifest(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from siloguard.cli import app

    version = tmp_path / "run" / "coordinator" / "models" / "v1"
    version.mkdir(parents=True)
    manifest = {"version": "v1", "parent": None, "created": "2026-12-01T00:00:00Z", "sha256": "ab" * 32, "rounds": 2,
                "participants": ["france", "germany"], "metrics": {"overall": {"ndcg@10": 0.3, "hr@10": 0.8}},
                "epsilon_per_store": {"france": 7.5}, "history": [{"round": 1}, {"round": 2}]}
    (version / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "run" / "coordinator" / "model").symlink_to("models/v1")
    runner = CliRunner()
    short = runner.invoke(app, ["model", "show", "--out", str(tmp_path / "run")])
    assert short.exit_code == 0, short.output
    assert "model v1 (parent none)" in short.output and "france epsilon 7.50" in short.output and "ndcg@10 0.3000" in short.output
    assert len(short.output.splitlines()) < 10
    full = runner.invoke(app, ["model", "show", "--out", str(tmp_path / "run"), "--json"])
    assert json.loads(full.output)["history"] == manifest["history"]


def test_when_a_round_has_150_stores_then_its_progress_is_one_short_line_and_the_json_has_every_store(tmp_path: Path) -> None:
    import json

    from siloguard.cli import round_line, write_rounds
    from siloguard.federation.strategy import RoundReport

    stores = [f"united-kingdom-{i}" for i in range(1, 151)]
    report = RoundReport(
        server_round=3,
        train={s: {"epsilon": 1.0 + i / 100, "epsilon-cap": 8.0, "examples": 10.0} for i, s in enumerate(stores[:140])},
        evaluate={s: {"ndcg@10": i / 1000, "new.ndcg@10": 0.01, "users": 5.0} for i, s in enumerate(stores)},
        skipped=stores[140:148], dropped=stores[148:],
        rejected={stores[0]: "norm"},
    )
    line = round_line(report, 10)
    assert "\n" not in line and len(line) < 220, line
    assert "round 3/10" in line and "stores trained 139, skipped 8, dropped 2, rejected 1" in line
    assert "store NDCG@10 min/med/max 0.000/0.074/0.149" in line and "epsilon spent 1.00-2.39 of 8" in line
    assert not any(s in line for s in stores)  # no store names: their figures go to the JSON
    rounds = json.loads(write_rounds(tmp_path / "rounds.json", {3: report}).read_text())["rounds"]
    assert len(rounds) == 1 and len(rounds[0]["per_store"]) == 150
    assert rounds[0]["per_store"][stores[5]]["evaluate"]["ndcg@10"] == 0.005 and rounds[0]["skipped"] == sorted(stores[140:148])


def test_python_dash_m_siloguard_is_the_command() -> None:
    import subprocess
    import sys

    from siloguard import __version__

    done = subprocess.run([sys.executable, "-m", "siloguard", "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"siloguard {__version__}"
