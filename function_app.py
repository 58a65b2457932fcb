"""The Functions app object: checks its settings, sets up telemetry, registers the blueprints,
nothing else."""
import azure.durable_functions as df
import azure.functions as func

from functions import (completion_events, contract_webhook, inference_arrivals, input_arrivals, party_auth_api,
                       party_sas_api, party_subscriptions_api, run_page, status_api)
from orchestrations import activities, inference_workflow, run_workflow
from shared import settings, telemetry

settings.check_app_settings()  # in Azure, refuse to start while a setting is missing (names each one)
telemetry.configure()          # Application Insights only when APPLICATIONINSIGHTS_CONNECTION_STRING is set
app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (contract_webhook.bp, input_arrivals.bp, inference_arrivals.bp, completion_events.bp, status_api.bp,
                  party_auth_api.bp, party_sas_api.bp, party_subscriptions_api.bp, run_page.bp,
                  run_workflow.bp, inference_workflow.bp, activities.bp):
    app.register_functions(blueprint)
