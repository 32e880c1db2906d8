"""Policy.warm_up: the policy node runs it at start-up so the first real step is not the slowest;
it must leave the pruner's state exactly as it was."""
import numpy as np

from vla_pruner_ros.model import load_policy
from vla_pruner_ros.pruning import PrunerConfig


def _observation(policy, seed):
    rng = np.random.default_rng(seed)
    size = policy.config.image_size
    images = {view: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for view in policy.view_names}
    return images, rng.normal(size=policy.proprio_dim) * 0.1


def test_warm_up_leaves_the_pruner_history_and_episode_untouched(tiny_checkpoint):
    import torch

    policy = load_policy(tiny_checkpoint, dtype=torch.float32)
    config = PrunerConfig(method="vla_pruner", keep_ratio=0.25, window=2)
    plain, warmed = policy.fork(config), policy.fork(config)
    instruction = "move the gripper above the red cube"
    outputs = {}
    for name, twin in (("plain", plain), ("warmed", warmed)):
        steps = []
        for seed in range(4):
            if name == "warmed" and seed in (1, 3):
                assert twin.warm_up() > 0
            images, proprio = _observation(twin, seed)
            steps.append(twin.predict(images, proprio, instruction))
        outputs[name] = steps
    for plain_step, warmed_step in zip(outputs["plain"], outputs["warmed"]):
        # The warm-up step neither filled the window nor reset it: the same steps prune, and the
        # same tokens are kept (step 3 is the first pruned one with window 2 ... after 2 warm-ups).
        assert (plain_step.kept_indices is None) == (warmed_step.kept_indices is None)
        if plain_step.kept_indices is not None:
            assert torch.equal(torch.as_tensor(plain_step.kept_indices), torch.as_tensor(warmed_step.kept_indices))
        np.testing.assert_allclose(plain_step.actions, warmed_step.actions, rtol=0, atol=1e-6)
    assert any(step.kept_indices is not None for step in outputs["plain"])
