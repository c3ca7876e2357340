"""megadfm.registry and config fields whose allowed values come from a registry (``doc(choices=...)``)."""

import dataclasses
import subprocess
import sys
import typing

import pytest

from megadfm.config import ConfigError, MegaDFMConfig, describe, load_config
from megadfm.config_base import check_choices, choice_keys, doc
from megadfm.dfm.config import DFMConfig
from megadfm.dfm.loss_presets import LOSS_PRESETS, resolve
from megadfm.dfm.normalizers import LOSS_NORMALIZERS
from megadfm.dfm.sampler_config import SamplerConfig
from megadfm.dfm.weighting import LOSS_WEIGHTINGS
from megadfm.registry import Registry, RegistryError


def test_register_get_keys_and_errors():
    reg = Registry("section.field")

    @reg.register("a")
    def a():
        return 1

    reg.register("b")(str)
    assert reg.get("a") is a and reg.keys() == ["a", "b"] and "b" in reg and list(reg) == ["a", "b"]
    with pytest.raises(RegistryError) as e:
        reg.get("c")
    assert str(e.value) == "section.field: unknown value 'c'; allowed values: a, b"
    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.register("a")(len)
    reg.unregister("b")
    assert reg.keys() == ["a"]
    with pytest.raises(RegistryError, match="unknown value 'b'"):
        reg.unregister("b")


def test_registered_values():
    assert LOSS_WEIGHTINGS.keys() == ["kl", "inverse_mask_ratio", "none"]
    assert LOSS_NORMALIZERS.keys() == ["tokens", "masked", "all_positions", "response_length"]
    assert LOSS_PRESETS.keys() == ["coda"]
    assert SamplerConfig.__dataclass_fields__["method"].metadata["choices"].keys() == ["euler", "confidence", "threshold"]


def test_presets_name_registered_pieces_and_no_weighting():
    for name in LOSS_PRESETS:
        assert name not in LOSS_WEIGHTINGS  # a preset name would shadow a weighting of the same name
        weighting, normalizer = resolve(name, "tokens")
        assert weighting in LOSS_WEIGHTINGS and normalizer in LOSS_NORMALIZERS
    assert resolve("coda", "tokens") == ("inverse_mask_ratio", "all_positions")
    assert resolve("kl", "masked") == ("kl", "masked")


@pytest.mark.parametrize("cls, field", [(DFMConfig, "loss_weighting"), (DFMConfig, "loss_normalizer"),
                                        (SamplerConfig, "method")])
def test_direct_construction_rejects_an_unregistered_value(cls, field):
    with pytest.raises(ConfigError) as e:
        cls(**{field: "bogus"})
    msg = str(e.value)
    allowed = choice_keys(cls.__dataclass_fields__[field].metadata["choices"])
    assert f"'{field}'" in msg and "'bogus'" in msg and ", ".join(allowed) in msg


def test_every_choices_field_is_checked_at_construction():
    """A section with a choices field must call check_choices in __post_init__ (else only YAML would be checked)."""
    def sections(cls):
        yield cls
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                yield from sections(tp)
    checked = []
    for cls in [*sections(MegaDFMConfig), SamplerConfig]:
        for f in dataclasses.fields(cls):
            if "choices" in f.metadata:
                with pytest.raises(ConfigError, match=f.name):
                    cls(**{f.name: "bogus"})
                checked.append(f"{cls.__name__}.{f.name}")
    assert {"DFMConfig.loss_weighting", "DFMConfig.loss_normalizer", "SamplerConfig.method"} <= set(checked)


def test_yaml_and_override_errors_name_the_key_and_source(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["dfm.loss_weighting=kll"])
    msg = str(e.value)
    assert msg.startswith("--set dfm.loss_weighting=kll: config key 'dfm.loss_weighting': unknown value 'kll'")
    assert "kl, inverse_mask_ratio, none, coda" in msg
    path = tmp_path / "cfg.yaml"
    path.write_text("dfm:\n  loss_normalizer: mean\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: config key 'dfm.loss_normalizer': unknown value 'mean'"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"'dfm.loss_weighting': expected str, got 3"):
        load_config(None, ["dfm.loss_weighting=3"])


def test_preset_rejects_a_normalizer_it_would_ignore():
    with pytest.raises(ConfigError, match="loss_normalizer"):
        DFMConfig(loss_weighting="coda", loss_normalizer="masked")
    DFMConfig(loss_weighting="coda", loss_normalizer="all_positions")  # the preset's own: consistent, accepted


def test_describe_lists_registered_values_and_a_registration_is_a_value():
    assert "dfm.loss_weighting = 'kl'  [one of 'kl', 'inverse_mask_ratio', 'none', 'coda']" in describe(MegaDFMConfig)
    reg = Registry("demo.kind")
    reg.register("x")(object)

    @dataclasses.dataclass
    class Demo:
        kind: str = doc("x", "a demo field", choices=reg)

        def __post_init__(self):
            check_choices(self)

    with pytest.raises(ConfigError, match="allowed values: x$"):
        Demo("y")
    reg.register("y")(object)
    assert Demo("y").kind == "y" and "[one of 'x', 'y']" in describe(Demo)


def test_config_modules_import_without_torch():
    code = "import sys, megadfm.dfm.config, megadfm.data.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
