"""The DDU engine: what the scripts (`train.py`, `evaluate.py`, `active_learning.py`) run, built on `net`,
`data` and `metrics`, with `utils` as plumbing below.

* `models`: the network flags and the one path flags -> network -> checkpoint (`build_model`,
  `load_checkpoint`, `load_network`);
* `training`: optimiser, schedule, one epoch and the epoch loop (the epoch plan is `utils.epochs`);
  `ensemble`: deep-ensemble members stacked into one vmapped network; `train_run`: one train.py run or an
  ensemble's members from resolved flags to trained networks and their files; `run_files`: a run's files
  (names, checkpoints, logs, resume state, the `Run{i}` checkpoint lookup); `tensorboard`: the optional
  TensorBoard scalars;
* `features`: one forward pass per model and data set; `evaluation`: per-run metrics of softmax, ensembles
  and DDU, and the Fig. 1 scores; `results`: the original's result JSON and the paper's table;
* `active_learning`: the acquisition steps' pieces; `al_run`: one active-learning experiment from flags to
  its files.
"""
