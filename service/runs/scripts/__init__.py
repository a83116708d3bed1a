"""Script runs: a team's own challenge-format train_gpt.py (with its files, env and
data variant) as a run. ``spec`` checks what a spec asks for (pure), ``files``
stores the uploaded bytes once by sha256; the worker's side is worker/run/script_job.py
and the log parser service/runs/logparse.py."""
