"""Fixtures of the ultradelta Python suite.

Models come from the workspace's generated testbed (`ultradelta-eval make-testbed`, which `cargo xtask reproduce
--generated` writes to target/testbed-generated): a tiny BERT (base and fine-tunes) and a tiny bfloat16 LLaMA.
The command-line binary (target/release/ultradelta) is the reference the package must equal byte for byte.

Environment:
  ULTRADELTA_TESTBED   generated testbed folder (default: <workspace>/target/testbed-generated)
  ULTRADELTA_CLI       the ultradelta binary (default: <workspace>/target/release/ultradelta)
  ULTRADELTA_REQUIRE   "1": a missing testbed, binary or client package fails instead of skipping (CI sets it)
  ULTRADELTA_REAL_TESTBED  the real testbed (MiniLM and LLaMA fine-tunes) for the slow real-client checks
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from _st import read_safetensors_folder, write_safetensors

WORKSPACE = Path(__file__).resolve().parents[3]
REQUIRE = os.environ.get("ULTRADELTA_REQUIRE") == "1"


def need(what: str):
    """Skips (or fails, under ULTRADELTA_REQUIRE=1) a test whose prerequisite is missing."""
    if REQUIRE:
        pytest.fail(f"required for this suite: {what}")
    pytest.skip(f"missing: {what}")


@pytest.fixture(scope="session")
def testbed() -> Path:
    p = Path(os.environ.get("ULTRADELTA_TESTBED", WORKSPACE / "target" / "testbed-generated"))
    if not (p / "models" / "base" / "model.safetensors").is_file():
        need(f"the generated testbed at {p} (cargo xtask reproduce --generated --quick writes it)")
    return p


@pytest.fixture(scope="session")
def cli() -> Path:
    p = Path(os.environ.get("ULTRADELTA_CLI", WORKSPACE / "target" / "release" / "ultradelta"))
    if not p.is_file():
        need(f"the ultradelta binary at {p} (cargo build --release -p ultradelta-cli)")
    return p


def run_cli(cli: Path, *args, check=True):
    """Runs the command line; returns the CompletedProcess (text)."""
    r = subprocess.run([str(cli), "--quiet", *map(str, args)], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"ultradelta {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def cli_error_line(r) -> str:
    """The one-line message the command line printed after `error: `."""
    lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, r.stderr
    return lines[0][len("error: "):]


@pytest.fixture(scope="session")
def bert(testbed) -> dict:
    m = testbed / "models"
    return {"base": m / "base", "sre": m / "sre", "jobs": m / "jobs"}


@pytest.fixture(scope="session")
def llama(testbed) -> dict:
    m = testbed / "llama" / "models"
    if not (m / "base" / "model.safetensors").is_file():
        need(f"the generated LLaMA family at {m}")
    return {"base": m / "base", "drunk": m / "drunk", "zen": m / "zen"}
