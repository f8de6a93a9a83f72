"""The joint GRN model: node features → graph encoder (torch-geometric) → TF / target heads → pair decoder.

scTransNet (Kommu et al. 2024) joins gene embeddings from a pretrained single-cell transformer with a GNN over the
known regulatory edges; GENELink (Chen & Liu 2022) is the same pipeline with expression features only and a GAT
encoder. Both are instances of `LinkPredictor`:

    x_g  = [ W_e · z_g  ‖  W_p · LN(p_g) ]         z_g: the gene's z-scored expression over cells (n_cells,)
                                                   p_g: its pretrained embedding (or a learned vector if unmapped)
    h    = Encoder(x, training edges)               GCN / GraphSAGE / GAT layers, or an MLP (no graph)
    t_g  = MLP_tf(h_g),  s_g = MLP_target(h_g)      GENELink's separate regulator and target views
    logit(tf → target) = MLP([t_tf ‖ s_target])  or  ⟨t_tf, s_target⟩ / √d

Shapes: expression (N, C), embedding (N, E), edge_index (2, M) with M training edges in both directions,
pairs (P, 2) [tf, target] → logits (P,).
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
    """Pair decoder: mlp on [tf ‖ target] or dot product."""
    dropout: float = 0.0
    """Dropout between encoder layers and on GAT attention. 0 by default: early stopping regularises, and without
    dropout the training forward pass also scores the validation pairs (one pass per epoch)."""
    pair_correlation: bool = False
    """Give the decoder each pair's co-expression as well: the Pearson r of the TF's and the target's expression across
    cells (and |r|), plus the product of their views for the MLP decoder. Off by default (GENELink and scTransNet
    decode from the two genes' views alone); without it the learned models cannot pick up co-expression on a network
    whose negatives carry no degree signal (e.g. the simulator's, with density-matched negatives)."""
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
                layer = GCNConv(in_dim, out, cached=True)  # the graph is fixed for a model's lifetime
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
    """

    def __init__(
        self,
        expression_dim: int,
        config: LinkModelConfig,
        embedding: Tensor | None = None,
        mapped: Tensor | None = None,
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
        if config.pair_correlation and expression_dim == 0:
            msg = "pair_correlation needs the expression block (expression_dim > 0)."
            raise ValueError(msg)
        pair_in = (3 * config.out_dim + 2) if config.pair_correlation else 2 * config.out_dim
        self.pair_mlp = (
            nn.Sequential(nn.Linear(pair_in, config.out_dim), nn.LeakyReLU(), nn.Linear(config.out_dim, 1))
            if config.decoder == "mlp"
            else None
        )
        self.correlation_weight = None
        if config.pair_correlation:
            # residual learning over a co-expression prior: logit = a · z + b · |z| + g(views), with z = r · sqrt(C);
            # (a, b) start at (0, 1) and g at 0, so epoch 0 scores pairs by |r| and training (with early stopping on
            # validation) keeps only what the views add
            self.correlation_weight = nn.Parameter(torch.tensor([0.0, 1.0]))
            self.view_weight = nn.Parameter(torch.zeros(1))  # dot decoder: g = w · <tf, target> / sqrt(d)
            if self.pair_mlp is not None:
                nn.init.zeros_(self.pair_mlp[-1].weight)
                nn.init.zeros_(self.pair_mlp[-1].bias)

    def node_features(self, expression: Tensor | None) -> Tensor:
        parts = []
        if self.expression_proj is not None:
            parts.append(self.expression_proj(expression))  # (N, input_dim)
        if self.embedding_proj is not None:
            emb = torch.where(self.mapped.unsqueeze(1), self.embedding, self.unmapped_vector)  # (N, E)
            parts.append(self.embedding_proj(self.embedding_norm(emb)))  # (N, input_dim)
        return torch.cat(parts, dim=1)  # (N, blocks · input_dim)

    def encode(self, expression: Tensor | None, edge_index: Tensor) -> tuple[Tensor, ...]:
        """Regulator and target views of every gene: (N, out_dim) each; with `pair_correlation` also the genes'
        unit-norm centred expression profiles (N, C), whose dot products are Pearson correlations."""
        x = self.node_features(expression)  # (N, blocks · input_dim)
        h = self.encoder(x, edge_index)  # (N, hidden_dims[-1])
        if self.config.skip:
            h = torch.cat([h, x], dim=1)  # (N, d)
        if not self.config.pair_correlation:
            return self.tf_head(h), self.target_head(h)
        centred = expression - expression.mean(dim=1, keepdim=True)
        profiles = centred / centred.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (N, C)
        return self.tf_head(h), self.target_head(h), profiles

    def decode(self, views: tuple[Tensor, Tensor], pairs: Tensor) -> Tensor:
        """Logits (P,) of pairs (P, 2) [tf, target] from `encode`'s views."""
        tf = views[0][pairs[:, 0]]  # (P, out_dim)
        target = views[1][pairs[:, 1]]  # (P, out_dim)
        if not self.config.pair_correlation:
            if self.pair_mlp is None:
                return (tf * target).sum(-1) / self.config.out_dim**0.5  # (P,)
            return self.pair_mlp(torch.cat([tf, target], dim=1)).squeeze(-1)  # (P,)
        r = (views[2][pairs[:, 0]] * views[2][pairs[:, 1]]).sum(-1, keepdim=True)  # (P, 1) Pearson r
        # r · sqrt(C) is ~N(0, 1) for unrelated genes: on the scale of the other inputs, whatever the cell count
        co = torch.cat([r, r.abs()], dim=1) * views[2].shape[1] ** 0.5  # (P, 2)
        prior = co @ self.correlation_weight  # (P,)
        if self.pair_mlp is None:
            return prior + self.view_weight * (tf * target).sum(-1) / self.config.out_dim**0.5  # (P,)
        return prior + self.pair_mlp(torch.cat([tf, target, tf * target, co], dim=1)).squeeze(-1)  # (P,)

    def forward(self, expression: Tensor | None, edge_index: Tensor, pairs: Tensor) -> Tensor:
        return self.decode(self.encode(expression, edge_index), pairs)
