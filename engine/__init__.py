"""The DDU engine: what the scripts (`train.py`, `evaluate.py`, `active_learning.py`) run, built on `net`,
`data` and `metrics`, with `utils` as plumbing below (docs/architecture.md).

* `network_flags`: the network flags, their checks and the `net.create_model` config they describe;
  `networks`: the one path flags -> network -> checkpoint (`build_model`, `load_checkpoint`, `load_network`);
* `training`: optimiser, schedule, the one epoch loop with the step passed in, and the epoch plan;
  `stacked_ensemble`: deep-ensemble members stacked into one vmapped network; `training_run`: one train.py
  run or an ensemble's members from resolved flags to trained networks and their files; `run_paths`: a
  run's file names and the `Run{i}` checkpoint lookup; `checkpointing`: resume state, the end-of-epoch
  files and what a stop kept; `tensorboard`: the optional TensorBoard scalars;
* `features`: one forward pass per model and data set; `evaluation`: per-run metrics of softmax, ensembles
  and DDU, and the Fig. 1 scores; `evaluation_run`: evaluate.py's runs from flags to the result JSON;
  `results`: the original's result JSON and the paper's table;
* `acquisition`: the acquisition steps' pieces; `al_run`: one active-learning experiment from flags to
  its files.
"""
