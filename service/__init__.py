"""caddie's service: settings, data model, run state machine, domain logic and the REST API."""
