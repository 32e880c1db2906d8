"""Checkpoint presets, writer, validation and loader (vla_pruner_ros.model.checkpoint)."""
import argparse
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vla_pruner_ros.model import OFTConfig, load_policy, make_checkpoint, verify_against_preset
from vla_pruner_ros.model import checkpoint as ckpt
from vla_pruner_ros.model.checkpoint import verify as ckpt_verify
from vla_pruner_ros.tools import checkpoint as ckpt_cli
from vla_pruner_ros.model.configuration_oft import LlamaTextConfig
from vla_pruner_ros.model.processing_oft import load_tokenizer, word_start_token_id


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_checkpoint("tiny", tmp_path_factory.mktemp("ckpt") / "tiny", seed=3)


@pytest.fixture
def tiny_copy(tiny_dir, tmp_path):
    return shutil.copytree(tiny_dir, tmp_path / "copy")


def _observation(seed=0):
    rng = np.random.default_rng(seed)
    images = {"fixed": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
              "wrist": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)}
    return images, np.array([0.1, 0.2, -1.0, 0.0, 1.0, 0.3, 0.5])


# --------------------------------------------------------------------------------- the writer
def test_make_writes_the_upstream_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "action_head--5000_checkpoint.pt",
            "proprio_projector--5000_checkpoint.pt", "dataset_statistics.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"} <= names
    raw = json.loads((tiny_dir / "config.json").read_text())
    assert raw["model_type"] == "openvla" and raw["arch_specifier"] == "no-align+fused-gelu-mlp"
    assert raw["timm_model_ids"] == ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
    assert raw["vision_backbone_id"] == "dinosiglip-vit-so-224px" and raw["use_fused_vision_backbone"] is True
    # text_config holds only non-default LlamaConfig fields, as OpenVLA writes it
    assert "rms_norm_eps" not in raw["text_config"] and raw["text_config"]["hidden_size"] == 64

    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("projector.fc1.weight").dtype == torch.bfloat16
    assert "vision_backbone.featurizer.blocks.0.ls1.scale_factor" in keys
    assert not any(k.endswith(".gamma") for k in keys)
    assert {"language_model.lm_head.weight", "language_model.model.embed_tokens.weight",
            "vision_backbone.fused_featurizer.attn_pool.latent", "projector.fc3.bias"} <= keys
    assert all(k.startswith(("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.", "projector.",
                             "language_model.")) for k in keys)

    head = torch.load(tiny_dir / "action_head--5000_checkpoint.pt", weights_only=True)
    proprio = torch.load(tiny_dir / "proprio_projector--5000_checkpoint.pt", weights_only=True)
    assert all(k.startswith("module.") for k in list(head) + list(proprio))
    assert head["module.model.fc1.weight"].dtype == torch.bfloat16
    assert head["module.model.fc1.weight"].shape == (64, 64 * 7)
    assert "module.model.mlp_resnet_blocks.1.ffn.1.weight" in head
    assert proprio["module.fc1.weight"].dtype == torch.float32 and proprio["module.fc1.weight"].shape == (64, 7)

    stats = json.loads((tiny_dir / "dataset_statistics.json").read_text())
    assert list(stats) == ["xarm6_sim"]
    assert {"q01", "q99", "mask", "mean", "std", "min", "max"} <= set(stats["xarm6_sim"]["action"])
    assert stats["xarm6_sim"]["action"]["mask"] == [True] * 6 + [False]


def test_tokenizer_files_load_with_transformers(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    config = OFTConfig.from_json_file(tiny_dir / "config.json")
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.unk_token_id == 0
    assert tokenizer.pad_token_id == config.pad_token_id == len(tokenizer) - 1  # <PAD> is the last real id
    assert config.text_config.vocab_size % 64 == 0 and config.text_config.vocab_size >= len(tokenizer)
    assert tokenizer.convert_ids_to_tokens(word_start_token_id(tokenizer)) == "▁"
    # Llama-2's ids, so upstream code that hard-codes them runs on our checkpoints as well
    assert word_start_token_id(tokenizer) == 29871 and tokenizer.pad_token_id == 32000
    assert config.text_config.vocab_size == 32064
    ids = tokenizer("In: What action should the robot take to pick up the red block?\nOut:")["input_ids"]
    assert ids[0] == 1 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("In: What action")
    # Merges in the "a b" string form that older tokenizers (OFT's pinned 0.19) can read.
    merges = json.loads((tiny_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert merges and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)


def test_word_start_id_is_looked_up_not_hard_coded(tmp_path):
    small = make_checkpoint("tiny", tmp_path / "small_vocab", tokenizer_pieces=448)
    policy = load_policy(small)
    assert policy.config.text_config.vocab_size == 512 and policy.config.pad_token_id == 448
    word_start = policy.prompt_builder.word_start_id
    assert word_start != 29871 and policy.tokenizer.convert_ids_to_tokens(word_start) == "▁"
    ids, _ = policy.prompt_builder("push the box")
    assert ids[-1] == word_start and ids[0] == 1
    images, proprio = _observation()
    assert np.isfinite(policy.predict(images, proprio, "push the box").actions).all()


def test_writer_is_deterministic_and_seeded(tiny_dir, tmp_path):
    again = make_checkpoint("tiny", tmp_path / "again", seed=3)
    other = make_checkpoint("tiny", tmp_path / "other", seed=4)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (tiny_dir, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["projector.fc1.weight"], c["projector.fc1.weight"])
    assert (tiny_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_make_rejects_bad_requests(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="oft-7b"):
        make_checkpoint("oft-7b", tmp_path / "big")
    with pytest.raises(ValueError, match="preset='huge'"):
        make_checkpoint("huge", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown overrides.*'colour'"):
        make_checkpoint("tiny", tmp_path / "y", colour="red")
    with pytest.raises(ValueError, match="not empty"):
        make_checkpoint("tiny", tiny_dir)
    with pytest.raises(ValueError, match="image_sizes"):
        make_checkpoint("tiny", tmp_path / "z", image_size=100)  # not a multiple of 14


# --------------------------------------------------------------------------------- the loader
def test_loaded_weights_equal_the_files(tiny_dir):
    loaded = ckpt.load_checkpoint(tiny_dir, dtype=torch.float32)
    model = loaded.model
    tensors = load_file(str(tiny_dir / "model.safetensors"))
    assert torch.equal(model.vision_backbone.featurizer.blocks[1].ls2.gamma,
                       tensors["vision_backbone.featurizer.blocks.1.ls2.scale_factor"].float())
    assert torch.equal(model.language_model.model.layers[5].mlp.down_proj.weight,
                       tensors["language_model.model.layers.5.mlp.down_proj.weight"].float())
    head = torch.load(tiny_dir / "action_head--5000_checkpoint.pt", weights_only=True)
    assert torch.equal(model.action_head.model.fc2.bias, head["module.model.fc2.bias"].float())
    assert loaded.info.action_dim == 7 and loaded.info.proprio_dim == 7 and loaded.info.chunk_length == 8
    assert all(p.dtype == torch.float32 and not p.is_meta for p in model.parameters())


def test_sharded_checkpoint_gives_identical_outputs(tiny_dir, tmp_path):
    sharded = make_checkpoint("tiny", tmp_path / "sharded", seed=3, shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not (sharded / "model.safetensors").exists()
    single_keys = set(load_file(str(tiny_dir / "model.safetensors")))
    assert set(index["weight_map"]) == single_keys
    images, proprio = _observation()
    out_single = load_policy(tiny_dir).predict(images, proprio, "pick up the red block")
    out_sharded = load_policy(sharded).predict(images, proprio, "pick up the red block")
    assert np.array_equal(out_single.actions, out_sharded.actions)


def _rewrite_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor_is_named(tiny_copy):
    _rewrite_weights(tiny_copy, lambda t: t.pop("language_model.model.layers.2.self_attn.k_proj.weight"))
    expected = r"missing tensor 'language_model\.model\.layers\.2\.self_attn\.k_proj\.weight'"
    with pytest.raises(ValueError, match=expected):
        load_policy(tiny_copy)


def test_extra_tensor_is_named_with_its_file(tiny_copy):
    _rewrite_weights(tiny_copy, lambda t: t.update({"projector.fc4.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'projector\.fc4\.weight' in model\.safetensors"):
        ckpt.load_checkpoint(tiny_copy)


def test_misshaped_tensor_is_named(tiny_copy):
    _rewrite_weights(tiny_copy, lambda t: t.update({"projector.fc3.bias": torch.zeros(65, dtype=torch.bfloat16)}))
    expected = r"'projector\.fc3\.bias' in model\.safetensors has shape \[65\], expected \[64\]"
    with pytest.raises(ValueError, match=expected):
        ckpt.load_checkpoint(tiny_copy)


def test_gamma_named_layerscale_is_rejected(tiny_copy):
    """timm's name is not the checkpoint's: a file with ``ls1.gamma`` is not an OFT checkpoint."""
    key = "vision_backbone.featurizer.blocks.0.ls1.scale_factor"
    _rewrite_weights(tiny_copy, lambda t: t.update({key.replace("scale_factor", "gamma"): t.pop(key)}))
    with pytest.raises(ValueError, match="ls1.gamma"):
        ckpt.load_checkpoint(tiny_copy)


def test_action_head_problems_name_tensor_and_file(tiny_copy):
    path = tiny_copy / "action_head--5000_checkpoint.pt"
    head = torch.load(path, weights_only=True)
    head.pop("module.model.mlp_resnet_blocks.0.ffn.0.bias")
    torch.save(head, path)
    expected = r"(?s)action_head--5000_checkpoint\.pt.*missing tensor 'model\.mlp_resnet_blocks\.0\.ffn\.0\.bias'"
    with pytest.raises(ValueError, match=expected):
        ckpt.load_checkpoint(tiny_copy)


def test_heads_without_module_prefix_also_load(tiny_copy, tiny_dir):
    for name in ("action_head--5000_checkpoint.pt", "proprio_projector--5000_checkpoint.pt"):
        state = torch.load(tiny_copy / name, weights_only=True)
        torch.save({k.removeprefix("module."): v for k, v in state.items()}, tiny_copy / name)
    images, proprio = _observation(1)
    a = load_policy(tiny_copy).predict(images, proprio, "open the drawer").actions
    b = load_policy(tiny_dir).predict(images, proprio, "open the drawer").actions
    assert np.array_equal(a, b)


def test_truncated_safetensors_gives_a_clear_error(tiny_copy):
    path = tiny_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="truncated safetensors file"):
        ckpt.load_checkpoint(tiny_copy)
    path.write_bytes(data[:4])
    with pytest.raises(ValueError, match="truncated safetensors file"):
        ckpt.load_checkpoint(tiny_copy)


def test_index_naming_a_missing_shard_fails(tiny_dir, tmp_path):
    sharded = make_checkpoint("tiny", tmp_path / "sharded", seed=3, shards=2)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors, which does not exist"):
        ckpt.load_checkpoint(sharded)


def test_unnorm_key_errors_list_the_keys(tiny_copy):
    stats_path = tiny_copy / "dataset_statistics.json"
    stats = json.loads(stats_path.read_text())
    stats["bridge_orig"] = copy.deepcopy(stats["xarm6_sim"])
    stats_path.write_text(json.dumps(stats))
    (tiny_copy / "vla_pruner_oft.json").unlink()  # no recorded default: the key must be chosen
    with pytest.raises(ValueError, match=r"several datasets \['bridge_orig', 'xarm6_sim'\]"):
        load_policy(tiny_copy)
    with pytest.raises(ValueError, match=r"unnorm_key='libero'.*\['bridge_orig', 'xarm6_sim'\]"):
        load_policy(tiny_copy, unnorm_key="libero")
    assert load_policy(tiny_copy, unnorm_key="bridge_orig").unnorm_key == "bridge_orig"


def test_statistics_must_match_the_head(tiny_copy):
    stats_path = tiny_copy / "dataset_statistics.json"
    stats = json.loads(stats_path.read_text())
    stats["xarm6_sim"]["action"]["q01"] = stats["xarm6_sim"]["action"]["q01"][:6]
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match=r"\['action'\]\['q01'\] has 6 values.*action dimension is 7"):
        load_policy(tiny_copy)


def test_inconsistent_preprocessor_config_is_rejected(tiny_copy):
    path = tiny_copy / "preprocessor_config.json"
    pre = json.loads(path.read_text())
    pre["means"][1] = [0.485, 0.456, 0.406]
    path.write_text(json.dumps(pre))
    with pytest.raises(ValueError, match="means=.*inconsistent"):
        ckpt.load_checkpoint(tiny_copy)


def test_sidecar_defaults_and_arguments(tiny_dir):
    policy = load_policy(tiny_dir, chunk_length=4, num_images=1)
    assert policy.chunk_length == 4 and policy.view_names == ("fixed",) and policy.num_visual_tokens == 256
    images, proprio = _observation()
    out = policy.predict({"fixed": images["fixed"]}, proprio, "push the box")
    assert out.actions.shape == (4, 7) and out.kept_indices.tolist() == list(range(256))
    prompt_rows = out.seq_len_before - (1 + 256 + 1 + 4 * 7 + 1)  # BOS, visual, proprio, placeholders, </s>
    assert prompt_rows == len(policy.prompt_builder("push the box")[0]) - 1
    with pytest.raises(ValueError, match="chunk_length=0"):
        load_policy(tiny_dir, chunk_length=0)


def test_smaller_images_give_fewer_visual_tokens(tmp_path):
    small = make_checkpoint("tiny", tmp_path / "small", image_size=112)
    config = json.loads((small / "config.json").read_text())
    assert config["image_sizes"] == [112, 112] and "vla_pruner_timm_overrides" in config
    policy = load_policy(small)
    assert policy.grid == (8, 8) and policy.num_visual_tokens == 128
    rng = np.random.default_rng(0)
    images = {"fixed": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8),
              "wrist": rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)[:, ::-1]}  # a negative-stride view
    out = policy.predict(images, np.zeros(7), "push the box")
    assert out.grid == (8, 8) and out.num_visual_tokens == 128 and np.isfinite(out.actions).all()


# ------------------------------------------------------------------------------------- config
REAL_7B_CONFIG = {
    "arch_specifier": "no-align+fused-gelu-mlp",
    "architectures": ["OpenVLAForActionPrediction"],
    "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                 "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
    "hf_llm_id": "meta-llama/Llama-2-7b-hf",
    "image_resize_strategy": "resize-naive",
    "image_sizes": [224, 224],
    "llm_backbone_id": "llama2-7b-pure",
    "llm_max_length": 2048,
    "model_type": "openvla",
    "n_action_bins": 256,
    "norm_stats": {"libero_spatial_no_noops": {"action": {"q01": [0.0] * 7, "q99": [1.0] * 7}}},
    "output_projector_states": False,
    "pad_to_multiple_of": 64,
    "pad_token_id": 32000,
    "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
    "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
    "timm_override_act_layers": [None, None],
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1",
    "use_fused_vision_backbone": True,
    "vision_backbone_id": "dinosiglip-vit-so-224px",
}


def test_real_config_json_parses_to_the_7b_sizes():
    config = OFTConfig.from_dict(REAL_7B_CONFIG)
    text = config.text_config
    sizes = (text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size)
    assert sizes == (4096, 32, 11008, 32064)
    assert text.rms_norm_eps == 1e-6  # OFT's LlamaConfig default, not Llama-2's released 1e-5
    assert config.timm_overrides is None and config.patches_per_view == 256 and config.grid_size == 16
    assert OFTConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(colour="red"), "unknown field 'colour'"),
    (lambda c: c["text_config"].update(sliding_window=4), r"text_config\.sliding_window: unknown"),
    (lambda c: c.update(timm_model_ids=["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_384"]),
     "inconsistent with vision_backbone_id"),
    (lambda c: c.update(image_sizes=[112, 112]), r"image_sizes=\[112, 112\] is inconsistent"),
    (lambda c: c.update(image_sizes=[224, 112]), "same size"),
    (lambda c: c["text_config"].update(vocab_size=32001), "not a multiple of pad_to_multiple_of"),
    (lambda c: c.update(use_fused_vision_backbone=False), "use_fused_vision_backbone"),
    (lambda c: c.update(arch_specifier="no-align+gelu-mlp"), "fused-gelu-mlp"),
    (lambda c: c.update(llm_backbone_id="mistral-v0.1-7b-pure"), "llm_backbone_id"),
    (lambda c: c["text_config"].update(rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    (lambda c: c["text_config"].update(num_attention_heads=30), "not divisible"),
    (lambda c: c.update(vla_pruner_timm_overrides=[{"embed_dim": 64, "widht": 3}, {}]), "unknown keys"),
])
def test_bad_config_fields_are_named(edit, message):
    raw = copy.deepcopy(REAL_7B_CONFIG)
    edit(raw)
    with pytest.raises(ValueError, match=message):
        OFTConfig.from_dict(raw)


def test_text_config_round_trip_keeps_only_differences():
    text = LlamaTextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=100)
    stored = text.to_dict()
    assert stored == {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "intermediate_size": 100}
    assert LlamaTextConfig.from_dict(stored) == text
    llama = text.to_transformers("sdpa")
    assert (llama.hidden_size, llama.num_key_value_heads, llama.rms_norm_eps) == (64, 4, 1e-6)


# ------------------------------------------------------------------------------ oft-7b on meta
def test_oft7b_layout_checked_on_meta_without_allocating():
    report = verify_against_preset("oft-7b")
    assert report["num_tensors"] == {"safetensors": 982, "action_head": 16, "proprio_projector": 4}
    assert report["num_parameters"]["safetensors"] == 7_541_237_184  # OpenVLA's 7.54 B
    assert report["num_visual_tokens"] == 512 and report["llm_layers"] == 32


def test_oft7b_check_detects_a_wrong_name_or_shape(monkeypatch):
    reference = ckpt.reference_oft7b_shapes

    def wrong_shape(*args):
        table = reference(*args)
        table["safetensors"]["projector.fc1.weight"] = (8704, 2048)
        return table

    monkeypatch.setattr(ckpt_verify, "reference_oft7b_shapes", wrong_shape)
    with pytest.raises(ValueError, match=r"'projector\.fc1\.weight'.*\[8704, 2176\]"):
        verify_against_preset("oft-7b")

    def renamed(*args):
        table = reference(*args)
        shape = table["safetensors"].pop("vision_backbone.featurizer.blocks.3.ls2.scale_factor")
        table["safetensors"]["vision_backbone.featurizer.blocks.3.ls2.gamma"] = shape
        return table

    monkeypatch.setattr(ckpt_verify, "reference_oft7b_shapes", renamed)
    with pytest.raises(ValueError, match="blocks.3.ls2"):
        verify_against_preset("oft-7b")


# ----------------------------------------------------------------------------------------- CLI
def test_cli_make_and_verify(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    ckpt_cli.add_arguments(parser)
    out = tmp_path / "cli"
    assert ckpt_cli.run(parser.parse_args(["make", "--preset", "tiny", "--out", str(out), "--shards", "2"])) == 0
    assert (out / "model.safetensors.index.json").is_file()
    assert ckpt_cli.run(parser.parse_args(["verify", "--path", str(out)])) == 0
    assert "OK" in capsys.readouterr().out
    assert ckpt_cli.run(parser.parse_args(["verify", "--preset", "oft-7b"])) == 0
    assert "7541237184" in capsys.readouterr().out


def test_cli_make_takes_the_libero_shapes(tmp_path, capsys):
    from vla_pruner_ros.tools.cli import main

    out = tmp_path / "libero"
    assert main(["checkpoint", "make", "--preset", "tiny", "--out", str(out), "--action-dim", "7",
                 "--proprio-dim", "8", "--center-crop", "on", "--unnorm-key", "libero_spatial_no_noops"]) == 0
    assert main(["checkpoint", "verify", "--path", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "action_dim 7, proprio_dim 8" in printed and "libero_spatial_no_noops" in printed
    assert json.loads((out / "vla_pruner_oft.json").read_text())["center_crop"] is True


# ------------------------------------------------------------- issue 14: statistics, crop, errors
def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_statistics_are_refused_not_taken_from_config_json(tiny_checkpoint, tmp_path):
    """config.json's norm_stats of a real OFT checkpoint are the base model's: never a silent
    fallback. Only an explicit statistics_source='config.json' uses them, and says so."""
    path = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (path / "dataset_statistics.json").unlink()
    assert ckpt.inspect_checkpoint.__module__.endswith("loader")
    with pytest.raises(ValueError, match=r"dataset_statistics\.json: missing.*norm_stats are not used"):
        ckpt.inspect_checkpoint(path)
    with pytest.raises(ValueError, match="dataset_statistics.json: missing"):
        load_policy(path, device="cpu")
    info = ckpt.inspect_checkpoint(path, statistics_source="config.json")
    assert info.statistics_file == path / "config.json" and "xarm6_sim" in info.statistics
    (path / "dataset_statistics.json").write_bytes(b"\xff\xfe not text")
    with pytest.raises(ValueError, match=r"dataset_statistics\.json: not a text file"):
        ckpt.inspect_checkpoint(path)
    (path / "dataset_statistics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"dataset_statistics\.json: expected an object .*got a JSON list"):
        ckpt.inspect_checkpoint(path)


def test_statistics_file_is_named_at_start_up(tiny_checkpoint):
    policy = load_policy(tiny_checkpoint, device="cpu")
    assert policy.info.statistics_file == tiny_checkpoint / "dataset_statistics.json"
    summary = policy.preprocessing_summary()
    assert "statistics from dataset_statistics.json" in summary and "unnorm key 'xarm6_sim'" in summary


def test_oft_layout_without_sidecar_defaults_to_upstream_center_crop(tiny_checkpoint, tmp_path):
    """A downloaded OFT checkpoint has no vla_pruner_oft.json: the crop is on, as in OFT's LIBERO
    eval and deploy, and the start-up line says so. With a sidecar, its choice stands."""
    path = _copy(tiny_checkpoint, tmp_path / "downloaded")
    (path / "vla_pruner_oft.json").unlink()
    policy = load_policy(path, device="cpu")
    assert policy.image_processor.center_crop is True
    summary = policy.preprocessing_summary()
    assert summary.startswith("center crop on, views fixed, wrist at 224 px") and "chunk 8" in summary
    rng = np.random.default_rng(0)
    images = {view: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for view in ("fixed", "wrist")}
    proprio = np.zeros(7)
    default = policy.predict(images, proprio, "pick up the cube").actions
    cropped = load_policy(path, device="cpu", center_crop=True).predict(images, proprio, "pick up the cube").actions
    plain = load_policy(path, device="cpu", center_crop=False).predict(images, proprio, "pick up the cube").actions
    np.testing.assert_array_equal(default, cropped)
    assert not np.array_equal(default, plain)
    # the sidecar written by make_checkpoint says "off" for the tiny preset: that choice stands
    assert load_policy(tiny_checkpoint, device="cpu").image_processor.center_crop is False


def _broken_checkpoints(src, root):
    """(name, directory) of checkpoints broken in the ways a download or an edit breaks them."""
    import os

    def stats_edit(fn):
        def edit(d):
            stats = json.loads((d / "dataset_statistics.json").read_text())
            for entry in stats.values():
                fn(entry)
            (d / "dataset_statistics.json").write_text(json.dumps(stats))  # json writes NaN as NaN
        return edit

    cases = {
        "config not JSON": lambda d: (d / "config.json").write_text("{not json"),
        "config a list": lambda d: (d / "config.json").write_text("[1, 2]"),
        "config empty": lambda d: (d / "config.json").write_text("{}"),
        "safetensors random": lambda d: (d / "model.safetensors").write_bytes(os.urandom(4000)),
        "safetensors truncated": lambda d: (d / "model.safetensors").write_bytes(
            (d / "model.safetensors").read_bytes()[:-100]),
        "head random": lambda d: (d / "action_head--5000_checkpoint.pt").write_bytes(os.urandom(4000)),
        "head missing": lambda d: (d / "action_head--5000_checkpoint.pt").unlink(),
        "statistics NaN": stats_edit(lambda e: e["action"].update(q99=[float("nan")] * 7)),
        "statistics short": stats_edit(lambda e: e["action"].update(q01=[0.0])),
        "statistics no action": stats_edit(lambda e: e.pop("action")),
        "statistics not UTF-8": lambda d: (d / "dataset_statistics.json").write_bytes(b"\xff\xfe\x00x"),
        "statistics missing": lambda d: (d / "dataset_statistics.json").unlink(),
        "preprocessor not JSON": lambda d: (d / "preprocessor_config.json").write_text("{{"),
        "sidecar a list": lambda d: (d / "vla_pruner_oft.json").write_text("[]"),
        "index not JSON": lambda d: (d / "model.safetensors.index.json").write_text("{"),
    }
    for name, edit in cases.items():
        d = _copy(src, root / name.replace(" ", "_"))
        edit(d)
        yield name, d


def test_checkpoint_verify_gives_one_line_errors(tiny_checkpoint, tmp_path, capsys):
    """`vla-pruner checkpoint verify` on broken checkpoints: exit 1, one line naming the file, no
    traceback -- and never OK for statistics that would un-normalise to NaN or the wrong shape."""
    from vla_pruner_ros.tools.cli import main

    names = {"statistics NaN": "not finite", "statistics short": "has 1 values",
             "statistics no action": "no 'action' entry", "statistics missing": "dataset_statistics.json: missing",
             "safetensors truncated": "truncated", "head random": "action_head--5000_checkpoint.pt",
             "sidecar a list": "vla_pruner_oft.json", "preprocessor not JSON": "preprocessor_config.json",
             "statistics not UTF-8": "dataset_statistics.json: not a text file", "config not JSON": "config.json"}
    for name, path in _broken_checkpoints(tiny_checkpoint, tmp_path):
        if name == "index not JSON":
            (path / "model.safetensors").rename(path / "model-00001-of-00001.safetensors")
        code = main(["checkpoint", "verify", "--path", str(path)])
        captured = capsys.readouterr()
        assert code == 1, (name, captured.out)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vla-pruner checkpoint verify: error: "), (name, captured.err)
        assert "Traceback" not in captured.err and "OK" not in captured.out, name
        assert names.get(name, str(path)) in lines[0], (name, lines[0])


def test_tokenizer_of_random_bytes_names_the_file(tiny_checkpoint, tmp_path):
    import os

    path = _copy(tiny_checkpoint, tmp_path / "ckpt")
    (path / "tokenizer.json").write_bytes(os.urandom(3000))
    with pytest.raises(ValueError, match=r"tokenizer\.json: not a tokenizer file"):
        load_policy(path, device="cpu")
    (path / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')  # JSON, not a tokenizer
    with pytest.raises(ValueError, match=r"the tokenizer files \['tokenizer.json'\] cannot be loaded"):
        load_policy(path, device="cpu")
