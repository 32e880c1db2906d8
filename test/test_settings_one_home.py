"""Issue 17, "one home for pruner settings": each PrunerConfig field is declared once
(`pruning.config.setting`: default, description, range, choices, node parameter name) and the
node's prune.* parameters, their validation, config/policy.yaml, the replay / eval-sim / premise
options and the METHOD:FIELD=VALUE variants all follow that declaration."""
import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from vla_pruner_ros.control.launch_logic import node_parameters
from vla_pruner_ros.control.params import (
    NODE_PRUNER,
    PARAMETERS,
    SPECS_BY_NAME,
    NodeSettings,
    apply_parameter_changes,
    pruner_parameters,
)
from vla_pruner_ros.pruning import PrunerConfig
from vla_pruner_ros.pruning.config import pruner_settings, setting
from vla_pruner_ros.pruning.variants import split_method
from vla_pruner_ros.replay import ReplayConfig, run_specs
from vla_pruner_ros.tools._arguments import add_pruner_arguments, pruner_config_from_args, pruner_option_names

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"  # this checkout's (the colcon share links to it)
NODE_SETTINGS = [s for s in pruner_settings() if s.ros_name is not None]
SCALAR_SETTINGS = [s for s in pruner_settings() if s.kind is not None]

# The node's prune.* parameters before issue 17 moved them here: the node's interface is unchanged.
NODE_NAMES_BEFORE = (
    "prune.enabled", "prune.method", "prune.keep_ratio", "prune.layer", "prune.window", "prune.decay",
    "prune.smoothing", "prune.ema_alpha", "prune.fusion_weight", "prune.seed", "prune.action_source",
    "prune.current_weight", "prune.shift_fallback", "prune.shift_image_threshold", "prune.shift_overlap_threshold",
    "prune.shift_widen", "prune.target_ms", "prune.min_keep_ratio",
)


def _ids(declared):
    return declared.name


# --- the node's parameters ---------------------------------------------------------------------
def test_node_parameters_are_generated_from_the_declarations_and_keep_their_names():
    prune_specs = [spec for spec in PARAMETERS if spec.name.startswith("prune.")]
    assert sorted(spec.name for spec in prune_specs) == sorted(NODE_NAMES_BEFORE)
    assert prune_specs == list(pruner_parameters(NODE_PRUNER))
    for declared in pruner_settings():
        if declared.ros_name is None:  # the layer tuples and unobserved: not node parameters
            assert f"prune.{declared.name}" not in SPECS_BY_NAME
            continue
        spec = SPECS_BY_NAME[declared.ros_name]
        assert spec.field == f"pruner.{declared.name}"
        assert spec.default == getattr(NODE_PRUNER, declared.name) and type(spec.default) is declared.kind
        assert spec.description == declared.description
        assert (spec.minimum, spec.maximum, spec.exclusive_minimum, spec.choices) == (
            declared.minimum, declared.maximum, declared.exclusive_minimum, declared.choices)
    # the node's one different default, and NodeSettings repeats no pruner field
    assert NODE_PRUNER == PrunerConfig(keep_ratio=0.25) and NodeSettings().pruner is NODE_PRUNER
    node_fields = {f.name for f in dataclasses.fields(NodeSettings)}
    assert not node_fields & {f.name for f in dataclasses.fields(PrunerConfig)}


def _refused(declared):
    if declared.kind is bool:
        return [1, "true"]
    if declared.choices is not None:
        return ["not-a-choice", 3]
    low = declared.minimum if declared.exclusive_minimum else declared.minimum - (1 if declared.kind is int else 1e-6)
    high = declared.maximum + (1 if declared.kind is int else 1e-6)
    bad = [low, high, "1"]
    return bad + ([math.nan, math.inf] if declared.kind is float else [declared.minimum + 0.5])


def _accepted(declared):
    if declared.kind is bool:
        return [True, False]
    if declared.choices is not None:
        return list(declared.choices)
    low = declared.minimum + 1e-6 if declared.exclusive_minimum else declared.minimum
    return [declared.kind(low), declared.kind(declared.maximum)]


@pytest.mark.parametrize("declared", SCALAR_SETTINGS, ids=_ids)
def test_each_declared_range_and_choice_is_what_pruner_config_and_the_node_enforce(declared):
    name, ros_name = declared.name, declared.ros_name
    for value in _refused(declared):
        with pytest.raises(ValueError, match=rf"PrunerConfig\.{name}="):
            PrunerConfig(**{name: value})
        if ros_name is not None:
            with pytest.raises(ValueError, match=ros_name.replace(".", r"\.")):
                apply_parameter_changes(NodeSettings(), {ros_name: value})
    for value in _accepted(declared):
        assert getattr(PrunerConfig(**{name: value}), name) == value
        if ros_name is not None:
            assert getattr(apply_parameter_changes(NodeSettings(), {ros_name: value}).pruner, name) == value


def test_a_live_change_set_with_one_bad_pruner_value_changes_nothing():
    settings = NodeSettings()
    with pytest.raises(ValueError, match="prune.shift_widen"):
        apply_parameter_changes(settings, {"prune.window": 5, "control_rate": 20.0, "prune.shift_widen": 0.5})
    assert settings == NodeSettings()
    new = apply_parameter_changes(settings, {"prune.window": 5, "control_rate": 20.0, "prune.method": "fastv"})
    assert new.pruner == NODE_PRUNER.replace(window=5, method="fastv") and new.control_rate == 20.0


def test_the_node_publishes_each_declaration_in_its_parameter_descriptors(tiny_checkpoint):
    """A real PolicyNode over rclpy: description, range and choices of every prune.* parameter."""
    from ros_harness import RosHarness
    from vla_pruner_ros.model import load_policy
    from vla_pruner_ros.nodes.policy_node import PolicyNode

    harness = RosHarness(threads=2)
    try:
        node = harness.add(PolicyNode(policy=load_policy(tiny_checkpoint, announce=False), context=harness.context))
        for declared in NODE_SETTINGS:
            descriptor = node.describe_parameter(declared.ros_name)
            assert descriptor.description == declared.description
            assert node.get_parameter(declared.ros_name).value == getattr(NODE_PRUNER, declared.name)
            if declared.minimum is None:
                assert not descriptor.integer_range and not descriptor.floating_point_range
            else:
                ranges = descriptor.integer_range if declared.kind is int else descriptor.floating_point_range
                assert (ranges[0].from_value, ranges[0].to_value) == (declared.minimum, declared.maximum)
            if declared.choices is not None:
                assert descriptor.additional_constraints == f"one of: {', '.join(declared.choices)}"
            if declared.exclusive_minimum:
                assert descriptor.additional_constraints == f"> {declared.minimum}"
    finally:
        harness.close()


def test_policy_yaml_holds_exactly_the_node_settings_and_their_defaults():
    text = (CONFIG_DIR / "policy.yaml").read_text()
    prune = yaml.safe_load(text)["vla_pruner_policy"]["ros__parameters"]["prune"]
    in_yaml = {f"prune.{key}": value for key, value in prune.items()}
    derived = {spec.name: spec.default for spec in pruner_parameters(NODE_PRUNER)}
    assert in_yaml.keys() == derived.keys(), "config/policy.yaml's prune: block differs from PrunerConfig's settings"
    for name, value in derived.items():
        assert in_yaml[name] == value and type(in_yaml[name]) is type(value), name


NODE_PARAMETER_FILES = sorted(p for p in CONFIG_DIR.glob("*.yaml") if "vla_pruner_policy:" in p.read_text())


@pytest.mark.parametrize("path", NODE_PARAMETER_FILES, ids=lambda p: p.name)
def test_every_prune_key_in_a_node_parameter_file_is_a_declared_setting_with_a_valid_value(path):
    """Overlays such as sim_reach.yaml name settings too: a renamed or removed setting shows here."""
    assert CONFIG_DIR / "policy.yaml" in NODE_PARAMETER_FILES
    assert "ros__parameters" in yaml.safe_load(path.read_text())["vla_pruner_policy"]
    prune = {name: value for name, value in node_parameters(path).items() if name.startswith("prune.")}
    assert prune.keys() <= {spec.name for spec in pruner_parameters(NODE_PRUNER)}
    apply_parameter_changes(NodeSettings(), prune)  # ValueError naming a bad value


# --- command-line options and variants ----------------------------------------------------------
def _actions(parser):
    return {action.dest: action for action in parser._actions}


def _check_options(parser, names, base):
    actions = _actions(parser)
    for name in names:
        declared = next(s for s in pruner_settings() if s.name == name)
        action = actions[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.default == getattr(base, name)
        assert action.help.startswith(declared.description.replace("%", "%%"))
        for bad in _refused(declared)[:2]:
            with pytest.raises(SystemExit):
                parser.parse_args([*_required(parser), action.option_strings[0], str(bad)])


def _required(parser):
    if any(a.dest == "bag" for a in parser._actions):
        return ["bag", "--checkpoint", "ckpt"]
    if any(a.dest == "sim" for a in parser._actions):
        return ["--sim", "1"]
    return []


def test_replay_takes_every_scalar_setting_as_an_option_defaulting_to_the_node():
    from vla_pruner_ros.tools import replay

    parser = argparse.ArgumentParser()
    replay.add_arguments(parser)
    names = pruner_option_names()
    assert set(names) == {s.name for s in SCALAR_SETTINGS} - {"method", "keep_ratio", "enabled"}
    _check_options(parser, names, NODE_PRUNER)
    args = parser.parse_args(["bag", "--checkpoint", "ckpt", "--layer", "2", "--window", "5", "--unobserved", "carry",
                              "--target-ms", "40", "--smoothing", "ema"])  # --layer: the old name still works
    config = ReplayConfig(methods=("vla_pruner", "vla_pruner:window=2"), keep_ratios=(0.5,),
                          pruner=pruner_config_from_args(args, names, base=NODE_PRUNER))
    expected = NODE_PRUNER.replace(prune_layer=2, window=5, unobserved="carry", target_ms=40.0, smoothing="ema")
    assert config.pruner == expected
    reference, plain, variant = run_specs(config)
    assert reference.settings.pruner == expected.replace(method="none", keep_ratio=1.0)
    assert plain.settings.pruner == expected.replace(keep_ratio=0.5)
    assert variant.settings.pruner == expected.replace(keep_ratio=0.5, window=2)


@pytest.mark.parametrize("command, names", [("eval_sim", ("prune_layer", "window")),
                                            ("premise", ("prune_layer", "window", "decay"))])
def test_eval_sim_and_premise_options_follow_the_declarations(command, names):
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"vla_pruner_ros.tools.{command}").add_arguments(parser)
    _check_options(parser, names, PrunerConfig())


@pytest.mark.parametrize("declared", [s for s in SCALAR_SETTINGS if s.name not in ("method", "keep_ratio", "enabled")],
                         ids=_ids)
def test_every_scalar_setting_can_be_a_method_variant_in_replay(declared):
    """A variant may set any field: replay used to copy them onto NodeSettings, which lacked some."""
    value = _accepted(declared)[-1]
    text = str(value).lower() if declared.kind is bool else str(value)
    method, overrides = split_method(f"vla_pruner:{declared.name}={text}")
    assert overrides == {declared.name: value}
    spec = run_specs(ReplayConfig(methods=(f"vla_pruner:{declared.name}={text}",), keep_ratios=(0.25,)))[-1]
    assert getattr(spec.settings.pruner, declared.name) == value


# --- adding a setting is one declaration --------------------------------------------------------
@dataclass(frozen=True)
class _WithGain(PrunerConfig):
    gain: float = setting(1.5, "A setting added for this test.", minimum=0.0, maximum=2.0)


def test_a_new_setting_is_validated_and_becomes_a_node_parameter_and_an_option():
    with pytest.raises(ValueError, match=r"gain=2\.5 is invalid: expected a number in \[0, 2\]"):
        _WithGain(gain=2.5)
    spec = pruner_parameters(_WithGain())[-1]
    assert (spec.name, spec.field, spec.default, spec.minimum, spec.maximum) == (
        "prune.gain", "pruner.gain", 1.5, 0.0, 2.0)
    parser = argparse.ArgumentParser()
    names = add_pruner_arguments(parser, base=_WithGain())
    assert names[-1] == "gain"
    config = pruner_config_from_args(parser.parse_args(["--gain", "0.5", "--window", "4"]), names, base=_WithGain())
    assert isinstance(config, _WithGain) and (config.gain, config.window) == (0.5, 4)
    with pytest.raises(SystemExit):
        parser.parse_args(["--gain", "3"])
