"""Checkpoints written by the code of commit 17fc61b (before the stage layout), and their predictions.

Run from a checkout of 17fc61b: ``PYTHONPATH=<checkout>/src python tests/data/make_old_checkpoints.py``
(it writes to /tmp/fx; copy the files here).
"""
import numpy as np

from napari_histosge.progress import run_to_end
from napari_histosge.training import TrainConfig, TrainingData, train

rng = np.random.default_rng(0)
n, g, d = 60, 3, 4
pos = np.stack(np.meshgrid(np.arange(10), np.arange(6)), -1).reshape(-1, 2) * 100.0
feats = rng.normal(size=(n, d)).astype(np.float32)
rgb = rng.uniform(size=(n, 3)).astype(np.float32)
y = np.abs(rng.normal(size=(n, g))).astype(np.float32)
data = TrainingData(feats, rgb, pos, y, [f"s{i}" for i in range(n)], [f"g{j}" for j in range(g)])
cfgs = {"histosge": TrainConfig(epochs=2, dim=16, heads=2, head_hidden=16, n_pos_bins=8, device="cpu"),
        "conditioned": TrainConfig.for_model("conditioned", epochs=1, dim=16, head_hidden=16, n_pos_bins=8,
                                             device="cpu", histosge_weight=0.0, diffusion_steps=4,
                                             distill_dim=8, neighbours=4, kriging_rank=0, n_samples=1,
                                             sample_steps=2)}
out = {}
for name, cfg in cfgs.items():
    m = run_to_end(train(data, cfg, checkpoint_path=f"/tmp/fx/{name}_17fc61b.pt"))
    pred = m.predict(feats, rgb, pos)
    out[name] = pred[0] if isinstance(pred, tuple) else pred
np.savez("/tmp/fx/old_predictions.npz", feats=feats, rgb=rgb, pos=pos, **out)
print("ok", {k: v.shape for k, v in out.items()})
