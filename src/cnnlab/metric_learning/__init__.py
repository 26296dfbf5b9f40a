"""Metric learning, one module per concept (as pytorch-metric-learning splits it): `distances`
(how far apart two embeddings are), `losses` (contrastive), `miners` (which pairs of a batch the
loss sees)."""
