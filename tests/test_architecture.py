"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they bite.

The contracts are DESIGN.md's module map made executable: no cycles between subpackages,
audit and storage are sinks, the coordinator / privacy service / compliance do not import
store-site internals (``siloguard.clients``; the remaining exceptions are listed as debt),
and the lower layers never import the API, the CLI or the coordinator.

``lint-imports`` runs in a subprocess (its own ``sys.path``, no cache written to the tree),
with this checkout's ``src`` first on the path, so it analyses the code under test even when
the virtual environment's editable install points elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PYPROJECT = ROOT / "pyproject.toml"
PACKAGE = "siloguard"

#: What audit and storage may import besides each other (DESIGN.md: sinks).
SINK_ALLOWED = {"siloguard.audit", "siloguard.storage", "siloguard.config", "siloguard.errors", "siloguard._files"}
#: The store's side of an erasure: the one module of siloguard.dsr the store boundary exempts.
DSR_STORE_SIDE = "siloguard.dsr.sync"


def lint_imports(cwd: Path, pythonpath: Path, config: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter's ``lint-imports`` entry point; exit code 0 means every contract is kept."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def contracts() -> dict[str, dict]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    assert config["root_package"] == PACKAGE
    return {c["id"]: c for c in config["contracts"]}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(SRC))
    try:
        return grimp.build_graph(PACKAGE, cache_dir=None)
    finally:
        sys.path.remove(str(SRC))


def test_import_contracts_are_kept() -> None:
    result = lint_imports(ROOT, SRC, PYPROJECT)
    report = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"import contracts broken (lint-imports exit {result.returncode}):\n{report}", pytrace=False)
    assert "0 broken" in report, report


def test_contract_module_lists_cover_the_whole_package(graph: grimp.ImportGraph) -> None:
    """A new top-level module or dsr module cannot slip past a contract by not being listed."""
    by_id = contracts()
    assert set(by_id) >= {"acyclic", "sinks", "store-boundary", "lower-layers"}
    top_level = graph.find_children(PACKAGE)

    sinks = by_id["sinks"]
    assert set(sinks["source_modules"]) == {"siloguard.audit", "siloguard.storage"}
    missing = top_level - SINK_ALLOWED - set(sinks["forbidden_modules"])
    assert not missing, f"add {sorted(missing)} to the sinks contract's forbidden_modules (pyproject.toml)"

    boundary = by_id["store-boundary"]
    dsr_sources = {m for m in boundary["source_modules"] if m.startswith("siloguard.dsr.")}
    expected = graph.find_children("siloguard.dsr") - {DSR_STORE_SIDE}
    assert dsr_sources == expected, (
        f"the store-boundary contract must list every siloguard.dsr module but {DSR_STORE_SIDE}: "
        f"missing {sorted(expected - dsr_sources)}, unknown {sorted(dsr_sources - expected)}"
    )
    assert {"siloguard.api", "siloguard.compliance", "siloguard.federation"} <= set(boundary["source_modules"])
    assert boundary["forbidden_modules"] == ["siloguard.clients"]


# ---- the contracts bite ----------------------------------------------------------------------
#
# A mirror of siloguard is written to tmp_path as ``fakepkg``: the same modules (empty files)
# with the same direct imports between them, as grimp sees them. The real contracts of
# pyproject.toml, renamed, are kept on the mirror; one added import breaks the right one.

FAKE = "fakepkg"


def _rename(name: str) -> str:
    return FAKE + name[len(PACKAGE) :]


def _write_mirror(graph: grimp.ImportGraph, root: Path) -> None:
    for module in graph.modules:
        if module != PACKAGE and not module.startswith(PACKAGE + "."):
            continue
        parts = _rename(module).split(".")
        is_package = bool(graph.find_children(module))
        path = root.joinpath(*parts, "__init__.py") if is_package else root.joinpath(*parts[:-1], parts[-1] + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        imported = sorted(
            i for i in graph.find_modules_directly_imported_by(module) if i == PACKAGE or i.startswith(PACKAGE + ".")
        )
        path.write_text("".join(f"import {_rename(i)}\n" for i in imported), encoding="utf-8")
    # Parent packages of mirrored modules need an __init__ too (namespace dirs are not packages).
    for directory in (root / FAKE).rglob("*"):
        if directory.is_dir() and not (directory / "__init__.py").exists():
            (directory / "__init__.py").write_text("", encoding="utf-8")


def _add_import(root: Path, module: str, imported: str) -> None:
    parts = module.split(".")
    path = root.joinpath(*parts, "__init__.py")
    if not path.exists():
        path = root.joinpath(*parts[:-1], parts[-1] + ".py")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"import {imported}\n")


@pytest.fixture()
def mirror(graph: grimp.ImportGraph, tmp_path: Path) -> Path:
    _write_mirror(graph, tmp_path)
    config = PYPROJECT.read_text(encoding="utf-8").replace(PACKAGE, FAKE)
    (tmp_path / "pyproject.toml").write_text(config, encoding="utf-8")
    return tmp_path


def _lint_mirror(root: Path) -> tuple[int, str]:
    result = lint_imports(root, root, root / "pyproject.toml")
    return result.returncode, result.stdout + result.stderr


def test_mirror_keeps_the_contracts(mirror: Path) -> None:
    """The mirror is faithful: every contract kept, every listed exception still matching."""
    code, report = _lint_mirror(mirror)
    assert code == 0, f"the mirror of siloguard breaks a contract (does the real package? see the test above):\n{report}"


@pytest.mark.parametrize(
    ("importer", "imported", "broken", "says"),
    [
        # the goal of the issue: a new import of store-site internals fails, directly ...
        ("fakepkg.api.keys", "fakepkg.clients.gating", "store-site internals", "fakepkg.api is not allowed to import fakepkg.clients"),
        ("fakepkg.federation.strategy", "fakepkg.clients.store", "store-site internals", "fakepkg.federation is not allowed to import fakepkg.clients"),
        # ... or through a module outside the contract (the store's side of erasure)
        ("fakepkg.compliance.engine", "fakepkg.dsr.sync", "store-site internals", "fakepkg.compliance is not allowed to import fakepkg.clients"),
        # the two cycles this contract set was written against, brought back
        ("fakepkg.privacy.masking", "fakepkg.policies.taxonomy", "No import cycles", "No cycles are allowed in fakepkg"),
        ("fakepkg.federation.prepare", "fakepkg.federation.app", "No import cycles", "No cycles are allowed in fakepkg.federation"),
        # sinks
        ("fakepkg.audit.report", "fakepkg.privacy.keys", "sinks", "fakepkg.audit is not allowed to import fakepkg.privacy"),
        ("fakepkg.storage.db", "fakepkg.runs", "sinks", "fakepkg.storage is not allowed to import fakepkg.runs"),
        # lower layers
        ("fakepkg.policies.gate", "fakepkg.federation.registry", "never import the API", "fakepkg.policies is not allowed to import fakepkg.federation"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(mirror: Path, importer: str, imported: str, broken: str, says: str) -> None:
    _add_import(mirror, importer, imported)
    code, report = _lint_mirror(mirror)
    assert code != 0, f"adding `import {imported}` to {importer} broke no contract:\n{report}"
    broken_section = report.split("Broken contracts", 1)[-1]
    assert broken in broken_section, report
    assert says in broken_section, report


def test_a_paid_debt_must_leave_the_ignore_list(mirror: Path) -> None:
    """An ignore_imports entry that no longer matches an import is an error, not dead weight."""
    path = mirror / FAKE / "federation" / "runner.py"
    path.write_text(
        "".join(line for line in path.read_text().splitlines(keepends=True) if line != "import fakepkg.clients.app\n")
    )
    code, report = _lint_mirror(mirror)
    assert code != 0, report
    assert "fakepkg.federation.runner -> fakepkg.clients.app" in report, report
