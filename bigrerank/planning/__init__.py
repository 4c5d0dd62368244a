"""Memory planning: what a training configuration needs per rank (device) and per node (host), before it runs.

`shape` reads the model's sizes off its config, `sizes` parses byte sizes, `estimate` turns a configuration
into per-rank and per-node components, `advice` finds the cheapest change that fits and the largest group,
`planner` puts them together: the report `bigrerank plan` prints and the check training runs before its model loads.
"""
