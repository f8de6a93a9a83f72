"""`scgrn grn`: GRN inference with a pretrained release, as a pipeline whose files read in order.

config.py             GrnConfig: every option, validated at once
beeline.py            load: a BEELINE / GENELink benchmark folder -> GrnDataset
user_data.py          load: the user's cells + a prior (or ground-truth) network -> GrnDataset
embeddings.py         evidence: per-gene vectors pooled from the release's contextual gene states
evidence.py           evidence: per-pair scores (co-expression, partial correlation, trees, the release's
                      in-silico deletion effect) shared by the baselines and the learned models
edge_sets.py          split: EdgeSplit and the sampling helpers
splits.py             split: GENELink's protocols, degree-aware negatives, cold-start TFs, prior hold-outs
degree_negatives.py   split: negatives that take node degree out of the signal
split_files.py        split: a split made elsewhere, read and checked
link_model.py         model: node features -> GNN -> TF / target views -> pair decoder
fit.py                fit: training with early stopping on validation
methods.py            fit/choose: every method behind one interface (fit on train, choose on val, score pairs)
baselines.py          the unsupervised and heuristic scores
metrics.py            score: AUROC, AUPRC, EPR, per-TF macro AUROC
report.py, plots.py   report: edges.tsv, metrics.json, results.md, curves
pipeline.py           run_grn: the orchestrator that calls each step once
"""
