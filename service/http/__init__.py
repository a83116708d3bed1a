"""What the two HTTP adapters share: the JSON API (service/api) and the web pages (service/web).

deps.py: the request's settings, database session, artifact store and caller (a bearer token or
the web session's cookie); errors.py: each domain error's HTTP status and the error bodies;
limits.py: the size and sign-in checks made before a body is read; session.py: the web sign-in
cookie and its CSRF token. service/api/app.py assembles the application from both adapters.
"""
