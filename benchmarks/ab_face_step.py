"""One Lite0 face-training step, old code vs new, to tell a code regression from a slow day.

    git worktree add /tmp/old REV
    for r in 1 2; do OLD_SRC=/tmp/old/src python benchmarks/ab_face_step.py; python benchmarks/ab_face_step.py; done

Each call times the frozen-stage forward of a 64-image batch at 192 px (images/s) and the
mean of six training steps from stage 5 (the `cpu` recipe's cached-feature path), with
whichever cnnlab `OLD_SRC` points at (before the staged forward moved into `SiameseNet`, the
task's `run_stages`/`embed_from_stage`) or the installed one. Alternate the two in one
session and compare the pairs: absolute times on the shared 2-core machine vary by day.
"""
import os
import sys

if os.environ.get("OLD_SRC"):
    # The editable install's import hook would shadow sys.path: drop it to import the old tree.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["OLD_SRC"])
import time

import torch

torch.manual_seed(0)
from cnnlab.metric_learning.losses import ContrastiveLoss
from cnnlab.models.siamese import SiameseNet

m = SiameseNet("tf_efficientnet_lite0", embedding_dim=128, weights="none", input_size=192)
stage = 5
old = hasattr(m, "features_until") is False
if old:
    from cnnlab.tasks.faces import embed_from_stage, run_stages
    feats = lambda x: run_stages(m, m.prepare_input(x), 0, stage)
    emb = lambda f: embed_from_stage(m, f, stage)
else:
    feats = lambda x: m.features_until(m.prepare_input(x), stage)
    emb = lambda f: m.embed_from(stage, f)
x = torch.randint(0, 255, (64, 3, 192, 192), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
m.eval()
with torch.no_grad():
    t = time.perf_counter(); f = feats(x); tf = time.perf_counter() - t
m.freeze_backbone(True, 4); m.train()
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
loss = ContrastiveLoss(1.0)
lab = torch.arange(16).repeat_interleave(4)
i, j = torch.triu_indices(64, 64, 1); same = lab[i] == lab[j]
for k in range(8):
    if k == 2: t = time.perf_counter()
    z = emb(f)
    l = loss(z[i], z[j], same); opt.zero_grad(); l.backward(); opt.step()
ts = (time.perf_counter() - t) / 6
print(f"{'old' if old else 'new'} features {64/tf:.1f} img/s  train step {ts*1000:.0f} ms")
