"""What a person runs by hand, above the scripts: `python -m tools.plots` (Fig. 1 and 2, training curves,
active-learning curves), `python -m tools.demo` (`make demo`), `python -m tools.results table res_*.json`
(the paper's table), `python -m tools.ambiguous_mnist` (regenerates Ambiguous-MNIST; it trains networks, so
it is a tool rather than part of `data`), and `two_moons`, the toy of `notebooks/two_moons.ipynb`."""
