"""Durable Functions on the local host: task-hub storage in Azurite, the orchestration and
activity dispatchers, and the management API the SDK's DurableOrchestrationClient calls."""
