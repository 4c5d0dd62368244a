"""Memory planning: what a training configuration needs per rank (device) and per node (host), before it runs.

`shape` reads the model's sizes off its config, `sizes` parses byte sizes, `estimate` turns a configuration
into per-rank and per-node components, `advice` finds the cheapest change that fits and the largest group,
`command` is `bigrerank plan` and the check training runs before the model loads.
"""
