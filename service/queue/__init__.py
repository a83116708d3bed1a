"""Sharing scarce compute: who starts next, and when each queued run should start.

* ``policy``   the pure dispatch rule (weighted fair share, budgets, capacity);
* ``forecast`` the same rule run forward on a simulated clock: queue position and
  estimated start of every queued run, and why it waits;
* ``estimates`` a run's expected time and GPU-hours from its hardware and time cap;
* ``state``    reads the facts both need from the database (I/O);
* ``settings`` the scheduling settings the API (forecasts) and the worker (dispatch) share.

The worker's scheduler (worker/control/dispatch.py) dispatches with ``policy``; the
API forecasts with ``forecast``; both read the facts through ``state``, so a
forecast is the scheduler's own decision played forward.
"""
