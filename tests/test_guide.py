"""Every code block of docs/adding-an-architecture.md works.

``python`` blocks run in order in one namespace (with a fresh default registry, restored after);
``toml`` blocks must parse and name a ``bt_core.plugins`` entry point; in ``bash`` blocks every
``bt`` command must parse with bt's own command line; ``text`` blocks are output, not run. Any other
fence language fails, so a new block has to choose.
"""

from __future__ import annotations

import re
import shlex
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import tomllib

from bt_core.cli import build_parser
from bt_core.registry import PluginRegistry, set_default_registry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-an-architecture.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
KNOWN = {"python", "toml", "bash", "text"}

pytest_plugins = ["pytester"]


def blocks(language: str | None = None) -> list[tuple[str, str]]:
    found = [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(GUIDE.read_text())]
    return [b for b in found if language is None or b[0] == language]


def test_every_block_declares_a_known_language() -> None:
    languages = [language for language, _ in blocks()]
    assert languages, "no code blocks found"
    unknown = sorted({language or "(none)" for language in languages} - KNOWN)
    assert not unknown, f"code blocks with languages the guide test does not handle: {unknown}"


@pytest.fixture(scope="module")
def namespace() -> Any:
    """The guide's python blocks, run in order in one namespace, with a registry of their own."""
    previous = set_default_registry(PluginRegistry(discover=False))
    scope: dict[str, Any] = {"__name__": "adding_an_architecture"}
    try:
        for number, (_, source) in enumerate(blocks("python"), start=1):
            code = compile(source, f"{GUIDE.name} [python block {number}]", "exec")
            exec(code, scope)
        yield scope
    finally:
        set_default_registry(previous)


def test_python_blocks_run_in_order(namespace: dict[str, Any]) -> None:
    assert len(blocks("python")) >= 8
    for name in ("WhisperEncoderLayerAdapter", "WhisperPlugin", "TestWhisperPlugin", "fold_query_scale"):
        assert name in namespace


def test_the_guide_adapter_converts_exactly(namespace: dict[str, Any]) -> None:
    import torch

    from bt_core import BetterTransformer

    fast = namespace["fast"]
    assert BetterTransformer.is_converted(fast)
    assert type(fast.layers[0]).__name__ == "WhisperEncoderLayerAdapter"
    torch.testing.assert_close(namespace["actual"], namespace["expected"], atol=1e-5, rtol=0)


def test_the_derive_sketch_folds_and_reverses_exactly(namespace: dict[str, Any]) -> None:
    """The guide's ``fold_query_scale`` sketch, used in a real adapter: exact and reversible."""
    import torch

    from bt_core import BetterTransformer, LayerMapping

    adapter_class = namespace["WhisperEncoderLayerAdapter"]
    fold = namespace["fold_query_scale"]

    class Folded(adapter_class):
        def __init__(self, layer: Any, config: Any) -> None:
            super().__init__(layer, config)
            fold(self, layer.self_attn, 1.0)  # a scale of 1 keeps the math: the fold must change nothing

    class Plugin:
        @namespace["hookimpl"]
        def bt_plugin_api_version(self) -> str:
            return "1.0"

        @namespace["hookimpl"]
        def bt_register_layers(self) -> list[Any]:
            return [LayerMapping("whisper", "WhisperEncoderLayer", Folded)]

    registry = PluginRegistry(discover=False)
    registry.register(Plugin(), "folded")
    encoder = namespace["WhisperEncoder"](namespace["tiny_whisper"]()).eval()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    features = namespace["whisper_inputs"](encoder.config, 2)["input_features"]
    with torch.inference_mode():
        expected = encoder(input_features=features).last_hidden_state
    fast = BetterTransformer.transform(encoder, registry=registry)
    with torch.inference_mode():
        actual = fast(input_features=features).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    after = BetterTransformer.reverse(fast).state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_the_guide_kit_subclass_passes(namespace: dict[str, Any], pytester: pytest.Pytester) -> None:
    module = types.ModuleType("guide_namespace")
    module.__dict__.update(namespace)
    sys.modules["guide_namespace"] = module
    try:
        pytester.makepyfile(test_guide_kit="from guide_namespace import TestWhisperPlugin\n")
        result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    finally:
        del sys.modules["guide_namespace"]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 9 and not outcomes.get("failed") and not outcomes.get("errors"), (
        result.stdout.str()
    )


def test_toml_blocks_parse_and_declare_the_entry_point() -> None:
    tomls = blocks("toml")
    assert tomls
    for _, source in tomls:
        data = tomllib.loads(source)
        entry_points = data["project"]["entry-points"]["bt_core.plugins"]
        assert entry_points, "the pyproject in the guide must declare a bt_core.plugins entry point"
        assert any(dep.startswith("bt-core") and "<" in dep for dep in data["project"]["dependencies"])


def test_bt_commands_in_shell_blocks_parse() -> None:
    parser = build_parser()
    commands = []
    for _, source in blocks("bash"):
        for line in source.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("bt "):
                commands.append(line)
                args = parser.parse_args(shlex.split(line)[1:])
                assert getattr(args, "func", None), line
    assert {"list", "doctor", "check"} <= {c.split()[1] for c in commands}
