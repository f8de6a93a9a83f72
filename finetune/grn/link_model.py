"""The joint GRN model: node features → graph encoder (torch-geometric) → TF / target heads → pair decoder.

scTransNet (Kommu et al. 2024) joins gene embeddings from a pretrained single-cell transformer with a GNN over the
known regulatory edges; GENELink (Chen & Liu 2022) is the same pipeline with expression features only and a GAT
encoder. Both are instances of `LinkPredictor`:

    x_g  = [ W_e · z_g  ‖  W_p · LN(p_g) ]         z_g: the gene's z-scored expression over cells (n_cells,)
                                                   p_g: its pretrained embedding (or a learned vector if unmapped)
    h    = Encoder(x, message-passing edges)        GCN / GraphSAGE / GAT layers, or an MLP (no graph)
    t_g  = MLP_tf(h_g),  s_g = MLP_target(h_g)      GENELink's separate regulator and target views
    logit(tf → target) = a · e_ts + MLP([t ‖ s ‖ t ⊙ s ‖ e_ts])    "mlp": an interaction decoder
                      or a · e_ts + w · ⟨t, s⟩ / √d                    "dot": GENELink's decoder

e_ts (F,) is the pair's evidence (`evidence.py`: co-expression, partial correlation, tree importance, the release's
in-silico deletion effect), each as a normal score of its rank among the candidate pairs; models built without pair
evidence drop the e terms. The t ⊙ s product lets the decoder score an interaction of the two genes instead of a sum
of two per-gene terms (an additive MLP on [t ‖ s] can only learn "good regulator" + "good target", i.e. degree).
With evidence, a starts at 1/F and the MLP's last layer (or w) at 0, so the untrained model ranks pairs by the mean
evidence score and training, early-stopped on validation, keeps only what the gene views add.

Shapes: expression (N, C), embedding (N, E), evidence (F, N, N), edge_index (2, M) with M message-passing edges in
both directions, pairs (P, 2) [tf, target] → logits (P,).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv

ENCODERS = ("gcn", "sage", "gat", "mlp")
DECODERS = ("mlp", "dot")


@dataclass
class LinkModelConfig:
    """Architecture of `LinkPredictor`; every field is checked at once in `__post_init__`."""

    encoder: str = "gcn"
    """Graph encoder: gcn (Kipf & Welling 2017), sage (Hamilton et al. 2017), gat (Veličković et al. 2018; GENELink's
    choice) or mlp (no message passing: the no-GNN ablation)."""
    hidden_dims: list[int] = field(default_factory=lambda: [128, 64])
    """Width of each encoder layer; the number of entries is the depth."""
    heads: int = 3
    """Attention heads per GAT layer (concatenated in hidden layers, averaged in the last)."""
    input_dim: int = 64
    """Width each feature block (expression, embedding) is projected to before the encoder."""
    out_dim: int = 32
    """Width of the TF and target views fed to the decoder."""
    decoder: str = "mlp"
    """Pair decoder: "mlp", an interaction MLP on [tf ‖ target ‖ tf ⊙ target] (and the pair evidence), or "dot"
    (GENELink's scaled dot product)."""
    dropout: float = 0.0
    """Dropout between encoder layers and on GAT attention. 0 by default: early stopping regularises, and without
    dropout the training forward pass also scores the validation pairs (one pass per epoch)."""
    skip: bool = True
    """Concatenate the encoder's input to its output before the heads (scTransNet concatenates the pretrained
    embedding to the GNN output), so message passing adds to the gene's own features instead of replacing them."""

    def __post_init__(self) -> None:
        problems = []
        if self.encoder not in ENCODERS:
            problems.append(f"encoder={self.encoder!r}: allowed {ENCODERS}")
        if self.decoder not in DECODERS:
            problems.append(f"decoder={self.decoder!r}: allowed {DECODERS}")
        if not self.hidden_dims or any(not isinstance(d, int) or d < 1 for d in self.hidden_dims):
            problems.append(f"hidden_dims={self.hidden_dims!r}: a non-empty list of ints >= 1 (one per layer)")
        for name in ("heads", "input_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r}: an int >= 1")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout!r}: a float in [0, 1)")
        if problems:
            msg = "invalid LinkModelConfig:\n  - " + "\n  - ".join(problems)
            raise ValueError(msg)


class GraphEncoder(nn.Module):
    """A stack of GCNConv / SAGEConv / GATConv layers (or Linear for "mlp") with ELU and dropout between them.

    Shapes: x (N, F), edge_index (2, M) → (N, hidden_dims[-1]).
    """

    def __init__(self, in_dim: int, config: LinkModelConfig) -> None:
        super().__init__()
        self.kind = config.encoder
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList()
        dims = config.hidden_dims
        for i, out in enumerate(dims):
            last = i == len(dims) - 1
            if self.kind == "gcn":
                # not cached: training passes a different message-passing graph each epoch (held-out supervision)
                layer = GCNConv(in_dim, out, cached=False)
            elif self.kind == "sage":
                layer = SAGEConv(in_dim, out)
            elif self.kind == "gat":
                # hidden layers concatenate heads (out // heads each); the last averages them (GAT's output layer)
                per_head = out if last else max(1, out // config.heads)
                layer = GATConv(in_dim, per_head, heads=config.heads, concat=not last, dropout=config.dropout)
                out = per_head * (1 if last else config.heads)
            else:
                layer = nn.Linear(in_dim, out)
            self.layers.append(layer)
            in_dim = out
        self.out_dim = in_dim

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if self.kind == "mlp" else layer(x, edge_index)
            if i < len(self.layers) - 1:
                x = self.dropout(torch.nn.functional.elu(x))
        return x


class LinkPredictor(nn.Module):
    """Scores TF → target pairs from gene features and the graph of training edges (see the module docstring).

    Args:
        expression_dim: C, cells per gene feature vector (0: no expression block).
        embedding: (N, E) fixed pretrained gene embeddings, or None for expression-only models (GENELink).
        mapped: (N,) bool; rows where it is False (genes the release's vocab lacks) use one learned vector.
        evidence: (F, N, N) fixed pair evidence e[:, tf, target], or None (decode from the two views alone).
    """

    def __init__(
        self,
        expression_dim: int,
        config: LinkModelConfig,
        embedding: Tensor | None = None,
        mapped: Tensor | None = None,
        evidence: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        blocks = 0
        self.expression_proj = None
        if expression_dim > 0:
            self.expression_proj = nn.Linear(expression_dim, config.input_dim)
            blocks += 1
        self.embedding_proj = None
        if embedding is not None:
            self.register_buffer("embedding", embedding.float())
            n = embedding.shape[0]
            self.register_buffer("mapped", torch.ones(n, dtype=torch.bool) if mapped is None else mapped.bool())
            self.unmapped_vector = nn.Parameter(torch.zeros(embedding.shape[1]))
            self.embedding_norm = nn.LayerNorm(embedding.shape[1])
            self.embedding_proj = nn.Linear(embedding.shape[1], config.input_dim)
            blocks += 1
        if blocks == 0:
            msg = "LinkPredictor needs expression features, an embedding, or both."
            raise ValueError(msg)
        self.encoder = GraphEncoder(blocks * config.input_dim, config)
        d = self.encoder.out_dim + (blocks * config.input_dim if config.skip else 0)
        self.tf_head = nn.Sequential(
            nn.Linear(d, config.out_dim), nn.LeakyReLU(), nn.Linear(config.out_dim, config.out_dim)
        )
        self.target_head = nn.Sequential(
            nn.Linear(d, config.out_dim), nn.LeakyReLU(), nn.Linear(config.out_dim, config.out_dim)
        )
        n_evidence = 0
        self.evidence_weight = None
        if evidence is not None:
            if evidence.dim() != 3 or evidence.shape[1] != evidence.shape[2] or evidence.shape[0] < 1:
                msg = f"evidence must be (F >= 1, N, N) pair scores; got shape {tuple(evidence.shape)}"
                raise ValueError(msg)
            n_evidence = evidence.shape[0]
            self.register_buffer("evidence", evidence.float())
            self.evidence_weight = nn.Parameter(torch.full((n_evidence,), 1.0 / n_evidence))
        self.pair_mlp = None
        if config.decoder == "mlp":
            self.pair_mlp = nn.Sequential(
                nn.Linear(3 * config.out_dim + n_evidence, config.out_dim), nn.LeakyReLU(), nn.Linear(config.out_dim, 1)
            )
        self.view_weight = None
        if evidence is not None:
            # residual learning over the evidence: the view term starts at 0 (see the module docstring)
            if self.pair_mlp is not None:
                nn.init.zeros_(self.pair_mlp[-1].weight)
                nn.init.zeros_(self.pair_mlp[-1].bias)
            else:
                self.view_weight = nn.Parameter(torch.zeros(1))

    def node_features(self, expression: Tensor | None) -> Tensor:
        parts = []
        if self.expression_proj is not None:
            parts.append(self.expression_proj(expression))  # (N, input_dim)
        if self.embedding_proj is not None:
            emb = torch.where(self.mapped.unsqueeze(1), self.embedding, self.unmapped_vector)  # (N, E)
            parts.append(self.embedding_proj(self.embedding_norm(emb)))  # (N, input_dim)
        return torch.cat(parts, dim=1)  # (N, blocks · input_dim)

    def encode(self, expression: Tensor | None, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """Regulator and target views of every gene: (N, out_dim) each."""
        return self.encode_features(self.node_features(expression), edge_index)

    def encode_features(self, x: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        """`encode` from `node_features`' output x (N, blocks · input_dim), which has no dropout and no mode, so one
        x serves an evaluation pass and a training pass at the same weights."""
        h = self.encoder(x, edge_index)  # (N, hidden_dims[-1])
        if self.config.skip:
            h = torch.cat([h, x], dim=1)  # (N, d)
        return self.tf_head(h), self.target_head(h)

    def decode(self, views: tuple[Tensor, Tensor], pairs: Tensor) -> Tensor:
        """Logits (P,) of pairs (P, 2) [tf, target] from `encode`'s views (and the pair evidence)."""
        tf = views[0][pairs[:, 0]]  # (P, out_dim)
        target = views[1][pairs[:, 1]]  # (P, out_dim)
        if self.evidence_weight is None:
            if self.pair_mlp is None:
                return (tf * target).sum(-1) / self.config.out_dim**0.5  # (P,)
            return self.pair_mlp(torch.cat([tf, target, tf * target], dim=1)).squeeze(-1)  # (P,)
        evidence = self.evidence[:, pairs[:, 0], pairs[:, 1]].T  # (P, F)
        prior = evidence @ self.evidence_weight  # (P,)
        if self.pair_mlp is None:
            return prior + self.view_weight * (tf * target).sum(-1) / self.config.out_dim**0.5  # (P,)
        return prior + self.pair_mlp(torch.cat([tf, target, tf * target, evidence], dim=1)).squeeze(-1)  # (P,)

    def forward(self, expression: Tensor | None, edge_index: Tensor, pairs: Tensor) -> Tensor:
        return self.decode(self.encode(expression, edge_index), pairs)
