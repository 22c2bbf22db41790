"""What the scripts share, below the packages `net`, `data` and `metrics`.

* `cli`: the network flags and the one path from flags (or a stored config) to a network and from a checkpoint
  into it (`build_model`, `load_checkpoint`);
* `run_files`: a run's files: naming, model files, logs, resume state, RNG capture, the resume check, the
  `Run{i}` checkpoint lookup;
* `training`: optimiser, schedule and the epoch loop; `train_run`: one `train.py` run (or an ensemble's
  members) from resolved flags to trained networks and their files; `evaluation`, `features`, `results`: scoring and
  aggregating runs; `active_learning`: the acquisition loop's pieces;
* `ensemble`: deep-ensemble members stacked into one vmapped network and trained together;
  `tensorboard`: the optional TensorBoard scalars of the per-epoch log;
* `plots`, `demo`, `toy`: figures, `make demo` and the two-moons toy;
* `errors`, `io`, `seed`, `device`, `distributed`, `progress`: one-sentence user errors, atomic writes,
  seeding, device choice, DDP set-up, progress bars.
"""
