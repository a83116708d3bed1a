"""Team notifications: a POST to the team's webhook when a run, a group or a sweep ends.

    event (run's final transition, sweep done) ──▶ webhook_deliveries row (same transaction)
                                                        │  control worker's webhook tick
                                                        ▼
                                    POST team.webhook_url (httpx, short timeout)
                                    ├─ 2xx: sent
                                    └─ else: retried with backoff, given up after N tries (why kept)

body.py: the JSON a chat tool accepts (pure); outbox.py: the events, queued in the caller's
transaction; send.py: the tick that delivers them. Which URLs a team may name as its webhook is
the team's own setting, checked where it is set: service/teams/webhook_url.py.
"""
