"""The API's routes, one router per resource; :func:`siloguard.api.app.create_app` includes them."""
