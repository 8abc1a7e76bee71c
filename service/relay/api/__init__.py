"""The server API (docs/api.md): HTTP for game backends, on the admin port.

`models` holds the typed request/response bodies (the OpenAPI schema is generated from
them), `keys` who may call, `routes` the endpoints, `client` a typed Python client.
"""
