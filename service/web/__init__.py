"""Web pages: server-rendered views of runs, results and teams (routes, templates, static)."""
