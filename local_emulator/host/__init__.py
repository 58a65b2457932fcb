"""A local Azure Functions + Durable Functions host: loads function_app.py the way the Python
worker does and serves its triggers on loopback, with task-hub state in Azurite."""
