"""Sweeps: a search over trainer knobs whose trials are run groups (service/sweeps/README in the module docstrings).

space      the knobs searched and their values or ranges, checked against trainer.config's bounds (pure)
strategies grid, random and Optuna's TPE: the next trial's knob values from the trials so far (pure)
predictor  a trial's final val_bpb from its train-loss curve so far, fitted on finished curves (pure)
plan       what a sweep does next: trials ended, trials to prune, how many to start, done (pure)
curves     finished curves: the public records' logs and the team's runs (I/O)
store      the sweep and trial rows, submit/stop/resume and the tick that advances sweeps (I/O)
"""
