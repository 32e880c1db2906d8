"""OpenVLA-OFT with the VLA-Pruner hook, loading the checkpoint directories users download for OFT.

    from vla_pruner_ros.model import load_policy, make_checkpoint
    make_checkpoint("tiny", "/tmp/tiny")                 # seeded random weights, real OFT layout
    policy = load_policy("/tmp/tiny")
    out = policy.predict(images={"fixed": img, "wrist": img2}, proprio=q, instruction="pick up the cube")

No ROS imports: the node wraps ``Policy``.
"""
from .checkpoint import (
    PRESETS,
    CheckpointPreset,
    build_model,
    inspect_checkpoint,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    verify_against_preset,
)
from .configuration_oft import LlamaTextConfig, OFTConfig
from .modeling_oft import OFTForActionPrediction
from .policy import Policy, PolicyOutput, llm_flops, load_policy

__all__ = [
    "PRESETS",
    "CheckpointPreset",
    "LlamaTextConfig",
    "OFTConfig",
    "OFTForActionPrediction",
    "Policy",
    "PolicyOutput",
    "build_model",
    "inspect_checkpoint",
    "llm_flops",
    "load_checkpoint",
    "load_policy",
    "make_checkpoint",
    "save_checkpoint",
    "verify_against_preset",
]
