"""``bt list``, ``bt doctor``, ``bt check``: in-process with a controlled registry, plus the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bt_core import LayerMapping, hookimpl
from bt_core.cli import main
from bt_core.ops import EXIT_BROKEN_PLUGIN, EXIT_MISMATCH, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNSUPPORTED, EXIT_USAGE
from bt_core.registry import PluginFailure, PluginRegistry, set_default_registry

ADAPTER = "bt_plugins_encoders.adapters:BertLayerAdapter"


def tiny_bert() -> Any:
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99)


class TinyBert:
    """Maps bert with a tiny example config; ``adapter`` and ``example_config`` can be swapped."""

    def __init__(self, adapter: Any = ADAPTER, example_config: Any = tiny_bert, refuse: dict[str, str] | None = None):
        self.adapter, self.example_config, self.refuse = adapter, example_config, refuse or {}

    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return "1.0"

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        return [LayerMapping("bert", "BertLayer", self.adapter, example_config=self.example_config)]

    @hookimpl
    def bt_refused_model_types(self) -> dict[str, str]:
        return self.refuse


class Crashes:
    @hookimpl
    def bt_plugin_api_version(self) -> str:
        return "1.0"

    @hookimpl
    def bt_register_layers(self) -> list[LayerMapping]:
        raise RuntimeError("boom while registering")


@pytest.fixture
def registry() -> Iterator[PluginRegistry]:
    fresh = PluginRegistry(discover=False)
    previous = set_default_registry(fresh)
    try:
        yield fresh
    finally:
        set_default_registry(previous)


# -- bt --help ---------------------------------------------------------------------------------------


def _modules_after(argv: list[str]) -> dict[str, Any]:
    code = (
        "import json, sys\n"
        "from bt_core.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print('\\n@@' + json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, "
        "'transformers': 'transformers' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    return {"stdout": done.stdout, **json.loads(done.stdout.rsplit("@@", 1)[1])}


def test_help_imports_neither_torch_nor_transformers() -> None:
    result = _modules_after(["--help"])
    assert result["rc"] == 0
    assert not result["torch"] and not result["transformers"]
    for command in ("list", "doctor", "check", "bench"):
        assert command in result["stdout"]


def test_list_imports_neither_torch_nor_transformers() -> None:
    result = _modules_after(["list"])
    assert result["rc"] == 0
    assert not result["torch"] and not result["transformers"], "bt list must stay light: a plugin imports torch early"


@pytest.mark.parametrize("command", ["list", "doctor", "check"])
def test_subcommand_help_documents_exit_codes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "5  check: a plugin is broken" in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


# -- bt list -----------------------------------------------------------------------------------------


def test_list_shows_type_layer_and_plugin(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(refuse={"t5": "relative position bias"}), "tiny")
    assert main(["list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "MODEL TYPE" in out
    line = next(line for line in out.splitlines() if line.startswith("bert "))
    assert line.split()[:3] == ["bert", "BertLayer", "tiny"]
    assert "(registered in-process)" in line
    assert "t5: relative position bias [tiny]" in out


def test_list_json(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["list", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["model_types"] == [
        {"model_type": "bert", "layer_class": "BertLayer", "plugin": "tiny", "distribution": None, "version": None}
    ]


def test_list_with_no_plugin_says_what_to_install(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == EXIT_OK
    assert "pip install bt-plugins-encoders" in capsys.readouterr().out


def test_list_warns_about_a_broken_plugin(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    registry.register(Crashes(), "crashes")
    assert main(["list"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "bert" in captured.out
    assert "plugin 'crashes'" in captured.err and "boom while registering" in captured.err


def test_list_shows_installed_packs_with_versions(capsys: pytest.CaptureFixture[str]) -> None:
    fresh = PluginRegistry()  # real discovery through entry points
    previous = set_default_registry(fresh)
    try:
        assert main(["list"]) == EXIT_OK
    finally:
        set_default_registry(previous)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("bert "))
    assert "encoders" in line and "bt-plugins-encoders" in line


# -- bt doctor ---------------------------------------------------------------------------------------


def test_doctor_healthy(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["doctor"]) == EXIT_OK
    out = capsys.readouterr().out
    import torch
    import transformers

    assert f"torch          {torch.__version__}" in out
    assert f"transformers   {transformers.__version__}" in out
    assert "nested tensors (cpu): ok" in out
    assert "fused kernel   (cpu): ok" in out
    assert "tiny" in out and "1 model type\n" in out
    assert "All good." in out


def test_doctor_says_what_bt_does_to_malloc(
    registry: PluginRegistry, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(TinyBert(), "tiny")
    monkeypatch.setenv("BT_MALLOC", "system")
    assert main(["doctor"]) == EXIT_OK
    assert "allocator      malloc left as is (BT_MALLOC=system)\n" in capsys.readouterr().out


def test_doctor_reports_failed_plugins(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    registry.register(Crashes(), "crashes")
    assert main(["doctor"]) == EXIT_MISMATCH
    out = capsys.readouterr().out
    assert "failed plugins (1):" in out
    assert "plugin 'crashes': failed to register: RuntimeError: boom while registering" in out


def test_doctor_without_plugins_is_a_problem(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == EXIT_MISMATCH
    assert "no bt plugin is installed" in capsys.readouterr().out


def test_doctor_lists_disabled_plugins(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BT_DISABLE_PLUGINS", "vision")
    fresh = PluginRegistry()
    previous = set_default_registry(fresh)
    try:
        assert main(["doctor"]) == EXIT_OK
    finally:
        set_default_registry(previous)
    out = capsys.readouterr().out
    assert "disabled plugins (1): BT_DISABLE_PLUGINS=vision" in out
    assert "\n  vision\n" in out


def test_doctor_reports_conflicts(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "first")
    registry.register(TinyBert(), "second")
    main(["doctor"])
    assert "'bert': 'second' wins over 'first'" in capsys.readouterr().out


# -- bt check ----------------------------------------------------------------------------------------


def test_check_notes_a_conflict_on_the_checked_type(
    registry: PluginRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(TinyBert(), "first")
    registry.register(TinyBert(), "second")
    assert main(["check", "bert"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "note: plugins 'second' and 'first' both convert 'bert'; using 'second'" in captured.err
    assert "(plugin second" in captured.out


def test_check_a_model_type(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["check", "bert"]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "converted 2 layers with BertLayerAdapter (plugin tiny" in out
    assert "token counts [8, 5, 2]" in out
    assert "last_hidden_state" in out and "valid tokens" in out
    assert "OK: every output within --atol 0.0001" in out


def test_check_compares_a_right_and_a_left_padded_batch_and_position_zero(
    registry: PluginRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    """Left padding puts a pad token at position 0, which BERT's pooler and CLS heads read."""
    registry.register(TinyBert(), "tiny")
    assert main(["check", "bert"]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    right, left = out.index("right-padded batch:"), out.index("left-padded batch:")
    assert right < left
    assert "pooler_output" in out[left:]
    assert "last_hidden_state at position 0" in out[left:] and "position 0: padding here" in out[left:]


@pytest.mark.parametrize("strategy", ["fused", "packed", "dense"])
def test_check_with_a_forced_strategy(
    registry: PluginRegistry, strategy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["check", "bert", "--strategy", strategy]) == EXIT_OK, capsys.readouterr()


def test_check_without_example_config_shrinks_the_default_config(
    registry: PluginRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(TinyBert(example_config=None), "tiny")
    assert main(["check", "bert"]) == EXIT_OK
    assert "AutoConfig.for_model, shrunk" in capsys.readouterr().out


def swapped_norms() -> type:
    """An adapter with norm1 and norm2 swapped: ``bt check`` must fail it."""
    from bt_plugins_encoders.adapters import BertLayerAdapter

    class SwappedNorms(BertLayerAdapter):
        def __init__(self, layer: Any, config: Any) -> None:
            super().__init__(layer, config)
            self.norm1_weight, self.norm2_weight = self.norm2_weight, self.norm1_weight

    return SwappedNorms


def test_check_fails_a_wrong_adapter(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(adapter=swapped_norms()), "tiny")
    assert main(["check", "bert"]) == EXIT_MISMATCH
    out = capsys.readouterr().out
    assert "FAIL" in out and "beyond --atol" in out


def test_check_atol(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(adapter=swapped_norms()), "tiny")
    assert main(["check", "bert", "--atol", "1e9"]) == EXIT_OK


@pytest.mark.parametrize(("dtype", "atol"), [("bfloat16", "0.05"), ("float16", "0.01")])
def test_check_in_a_reduced_precision(
    registry: PluginRegistry, dtype: str, atol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both models run in --dtype, so the default tolerance is that dtype's, not float32's."""
    registry.register(TinyBert(), "tiny")
    assert main(["check", "bert", "--dtype", dtype]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"{dtype} on cpu" in out and f"OK: every output within --atol {atol}" in out


@pytest.mark.parametrize(("dtype", "atol"), [("bfloat16", "0.05"), ("float16", "0.01")])
def test_check_under_autocast_runs_both_models_under_it(
    registry: PluginRegistry, dtype: str, atol: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Mixed-precision inference keeps float32 weights and runs under torch.autocast: both models run so."""
    from transformers.models.bert.modeling_bert import BertLayer

    import bt_core._engine

    registry.register(TinyBert(), "tiny")
    seen: list[torch.dtype | None] = []
    real_bert_layer_forward = BertLayer.forward

    def spy(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        enabled = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if enabled else None)
        assert self.attention.self.query.weight.dtype == torch.float32
        return real_bert_layer_forward(self, *args, **kwargs)

    def engine_spy(*args: object, **kwargs: object) -> object:
        seen_by_bt.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real_choose_strategy(*args, **kwargs)

    seen_by_bt: list[torch.dtype | None] = []
    real_choose_strategy = bt_core._engine.choose_strategy
    monkeypatch.setattr(BertLayer, "forward", spy)
    monkeypatch.setattr(bt_core._engine, "choose_strategy", engine_spy)
    assert main(["check", "bert", "--autocast", dtype]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert f"under torch.autocast('cpu', torch.{dtype})" in out and f"OK: every output within --atol {atol}" in out
    assert seen and set(seen) == {getattr(torch, dtype)}  # the original's layers
    assert seen_by_bt and set(seen_by_bt) == {getattr(torch, dtype)}  # the converted model's
    assert main(["check", "bert", "--autocast", dtype, "--dtype", dtype]) == EXIT_USAGE
    assert f"--autocast runs float32 models; drop --dtype {dtype} or --autocast" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_check_on_a_device_torch_cannot_see(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["check", "bert", "--device", "cuda"]) == EXIT_USAGE
    assert "--device cuda: this torch" in capsys.readouterr().err
    assert main(["check", "bert", "--device", "gpu0"]) == EXIT_USAGE
    assert "--device 'gpu0' is not a torch device; use cpu, cuda or cuda:N" in capsys.readouterr().err


def test_check_an_unsupported_type(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(), "tiny")
    assert main(["check", "gpt2"]) == EXIT_UNSUPPORTED
    err = capsys.readouterr().err
    assert "'gpt2' is not a model type the installed bt plugins convert" in err
    assert "supported model types: bert" in err


def test_check_names_the_pack_to_install(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "vit"]) == EXIT_UNSUPPORTED
    assert "pip install bt-plugins-vision" in capsys.readouterr().err


def test_check_a_refused_type(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(refuse={"t5": "relative position bias"}), "tiny")
    assert main(["check", "t5"]) == EXIT_UNSUPPORTED
    assert "cannot be converted exactly: relative position bias (plugin 'tiny')" in capsys.readouterr().err


def test_check_a_type_whose_pack_is_broken(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.failures.append(
        PluginFailure("encoders", "bt-plugins-encoders", "0.1.0", "failed to load: ImportError: no module named x")
    )
    assert main(["check", "bert"]) == EXIT_BROKEN_PLUGIN
    err = capsys.readouterr().err
    assert "bt-plugins-encoders, which is installed but failed to load" in err and "ImportError" in err


def raises_on_construction() -> type:
    """An adapter whose constructor raises, as one reading a weight the layer lacks does."""
    from bt_plugins_encoders.adapters import BertLayerAdapter

    class Raises(BertLayerAdapter):
        def __init__(self, layer: Any, config: Any) -> None:
            raise KeyError("attention")

    return Raises


def test_check_an_adapter_that_raises(registry: PluginRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    registry.register(TinyBert(adapter=raises_on_construction()), "tiny")
    assert main(["check", "bert"]) == EXIT_BROKEN_PLUGIN
    assert "KeyError" in capsys.readouterr().err


def test_check_a_missing_path(registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(tmp_path / "nope")]) == EXIT_NOT_FOUND
    assert "no such file or folder" in capsys.readouterr().err


def test_check_a_folder_without_checkpoint(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(tmp_path)]) == EXIT_NOT_FOUND
    assert "no config.json" in capsys.readouterr().err


def test_check_a_local_checkpoint(registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from transformers import BertModel

    registry.register(TinyBert(), "tiny")
    torch.manual_seed(0)
    BertModel(tiny_bert()).save_pretrained(tmp_path / "tiny-bert")
    assert main(["check", str(tmp_path / "tiny-bert")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "checkpoint" in out and "model type 'bert'" in out and "OK:" in out


def test_check_a_checkpoint_compares_the_task_head_its_config_names(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import BertForSequenceClassification

    registry.register(TinyBert(), "tiny")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert()).save_pretrained(tmp_path / "classifier")
    saved = json.loads((tmp_path / "classifier" / "config.json").read_text())
    assert saved["architectures"] == ["BertForSequenceClassification"]
    assert main(["check", str(tmp_path / "classifier")]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "model class: BertForSequenceClassification (from config.architectures)" in out
    assert "(BertForSequenceClassification, model type 'bert')" in out
    left = out.index("left-padded batch:")
    assert "logits" in out[:left] and "logits" in out[left:]  # the head's output, on both batches


def test_check_a_checkpoint_whose_architecture_transformers_lacks_compares_the_base_model(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from transformers import BertModel

    registry.register(TinyBert(), "tiny")
    torch.manual_seed(0)
    BertModel(tiny_bert()).save_pretrained(tmp_path / "custom")
    config_file = tmp_path / "custom" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["architectures"] = ["AcmeBertForRanking"]  # a class from custom code, not in transformers
    config_file.write_text(json.dumps(saved))
    assert main(["check", str(tmp_path / "custom")]) == EXIT_OK, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "names AcmeBertForRanking, which transformers does not have" in out
    assert "Its task head is not compared" in out and "(BertModel, model type 'bert')" in out


def test_check_a_checkpoint_with_broken_weights(
    registry: PluginRegistry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(TinyBert(), "tiny")
    folder = tmp_path / "broken"
    tiny_bert().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["check", str(folder)]) == EXIT_NOT_FOUND
    assert "the weights cannot be loaded" in capsys.readouterr().err


# -- the real console script -------------------------------------------------------------------------


def _console_script() -> str:
    beside = Path(sys.executable).with_name("bt")
    found = str(beside) if beside.exists() else shutil.which("bt")
    assert found, "the `bt` console script is not installed (pip install -e .)"
    return found


def test_console_script_list_and_check() -> None:
    script = _console_script()
    listed = subprocess.run([script, "list"], capture_output=True, text=True, timeout=120, check=False)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert any(line.startswith("bert ") for line in listed.stdout.splitlines())
    missing = subprocess.run(
        [script, "check", "./no/such/folder"], capture_output=True, text=True, timeout=120, check=False
    )
    assert missing.returncode == EXIT_NOT_FOUND
    assert "no such file or folder" in missing.stderr
