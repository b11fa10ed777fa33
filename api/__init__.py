"""The admin HTTP API: a Litestar app (routes, auth, errors) over :mod:`tierbox.ops`."""
