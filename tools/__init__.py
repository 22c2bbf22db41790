"""Tools a person runs by hand: `python -m tools.plots`, `python -m tools.demo` (`make demo`),
`python -m tools.two_moons` and `python -m tools.results table`."""
