"""OpenVLA-OFT checkpoint directories: presets, a writer, validation and a loader.

A checkpoint directory, as users download it for OFT (``openvla-7b-oft-finetuned-*``) and as
``make_checkpoint`` writes it:

    config.json                         OpenVLA config (see configuration_oft.py)
    model.safetensors                   or model-0000i-of-0000n.safetensors + model.safetensors.index.json
    action_head--<step>_checkpoint.pt   L1-regression head state dict, keys "module.*" (bf16)
    proprio_projector--<step>_checkpoint.pt   proprio projector, keys "module.*" (fp32); optional
    dataset_statistics.json             {unnorm_key: {"action": {q01, q99, mask, ...}, "proprio": {...}}}
    tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ tokenizer.model for Llama-2)
    preprocessor_config.json, generation_config.json

Safetensors keys: ``vision_backbone.featurizer.*`` (DINOv2, LayerScale as ``ls*.scale_factor``),
``vision_backbone.fused_featurizer.*`` (SigLIP), ``projector.fc1/fc2/fc3.*``,
``language_model.model.*`` and ``language_model.lm_head.weight`` (stored, unused by the L1 head).

Project extension: ``vla_pruner_oft.json`` (absent in real checkpoints) records what real
config.json files do not hold -- chunk length, number of views, unnorm key, center crop,
normalisation type, and ``action_frame`` when the chunk is relative to the proprio (absent:
absolute, as OFT's) -- and is read as defaults by ``load_checkpoint``.

One job per module: ``layout`` (file names, defaults), ``presets``, ``tensors`` (tensor naming
and the table check), ``files`` (safetensors headers, head files), ``loader``, ``writer`` and
``verify`` (the real-size check); the command line is ``vla_pruner_ros.tools.checkpoint``.
Everything is re-exported here.
"""

from .files import find_component_file, load_component_state_dict, read_safetensors_header, weight_file_table
from .layout import (
    BACKBONE_PREFIXES,
    CONFIG_FILE,
    DDP_PREFIX,
    DEFAULT_CHUNK_LENGTH,
    DEFAULT_NUM_IMAGES,
    INDEX_FILE,
    LM_HEAD_KEY,
    PREPROCESSOR_FILE,
    SIDECAR_FILE,
    SINGLE_WEIGHTS_FILE,
    STATISTICS_FILE,
    preprocessor_config,
    read_json_object,
)
from .loader import (
    CheckpointInfo,
    LoadedCheckpoint,
    check_statistics,
    inspect_checkpoint,
    load_checkpoint,
    read_sidecar,
    validate_unnorm_key,
)
from .presets import PRESETS, CheckpointPreset, get_preset, preset_config
from .tensors import check_tensor_table, expected_backbone_shapes, expected_component_shapes
from .verify import reference_oft7b_shapes, verify_against_preset
from .writer import TORCH_DTYPES, build_model, make_checkpoint, save_checkpoint
