"""infra/ read through pycep-parser: every Bicep file parses, and the properties the clean room
depends on are there: identity-based storage with no shared key, the Flex Consumption app on
Python 3.11, the Event Grid filters that feed the blob and completion triggers, Key Vault with
RBAC and purge protection, and each role assignment with Microsoft's built-in role id."""
from __future__ import annotations

import json
import re

import pytest

from shared import events, settings, skr_sidecar, storage_names
from tests.infra.bicep import INFRA, app_settings, bicep_files, body, member_of, one, parsed, resources

# Microsoft's built-in role definition ids ("Azure built-in roles" reference).
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Reader": "21090545-7ca7-4776-b22c-e363652d74d2",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Crypto Service Release User": "08bbd89e-9f13-488c-ac41-acfcb10c90ab",
    "EventGrid Data Sender": "d5a91429-5739-47e2-a06b-3470a27159e7",
    "Azure Container Instances Contributor Role": "5d977122-f97e-4b4d-a52f-6b43003ddb4d",
    "Managed Identity Operator": "f1a07417-d97a-45cb-824c-7a7467783830",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "AcrPush": "8311e382-0749-4cb8-b61a-304f252e45ec",
}

# Who gets which role on what: nothing more (the least each identity's code needs).
EXPECTED_ASSIGNMENTS = {
    ("appPrincipalId", "Storage Blob Data Owner", "storage"),
    ("appPrincipalId", "Storage Queue Data Contributor", "storage"),
    ("appPrincipalId", "Storage Table Data Contributor", "storage"),
    ("appPrincipalId", "Monitoring Metrics Publisher", "applicationInsights"),
    ("appPrincipalId", "Key Vault Reader", "vault"),
    ("appPrincipalId", "Key Vault Secrets User", "topicKeySecret"),
    ("appPrincipalId", "Key Vault Secrets User", "partyAuthSecret"),
    ("appPrincipalId", "EventGrid Data Sender", "topic"),
    ("appPrincipalId", "Azure Container Instances Contributor Role", "resourceGroup"),
    ("appPrincipalId", "Managed Identity Operator", "trainerIdentity"),
    ("trainerPrincipalId", "Key Vault Crypto Service Release User", "vault"),
    ("trainerPrincipalId", "AcrPull", "registry"),
    ("deployerPrincipalId", "AcrPush", "registry"),
}


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path):
    document = parsed(str(path.relative_to(INFRA)))
    assert document.get("resources") or document.get("modules")


def test_main_deploys_every_module_at_subscription_scope():
    main = parsed("main.bicep")
    assert main["globals"]["scope"]["value"] == "subscription"
    for name, module in main["modules"].items():
        assert (INFRA / module["detail"]["path"]).is_file(), name
    assert set(main["modules"]) == {"identities", "monitoring", "storage", "events", "registry", "vault", "app", "rbac"}
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    required = {name for name, p in main["parameters"].items() if p["default"] is None}
    assert required <= set(parameters)


def test_role_assignments_use_microsofts_built_in_role_ids():
    """...except the one custom role the app holds on the vault: create and read keys (the state
    KEKs of continued-training contracts), nothing else, no control-plane action."""
    rbac = parsed("modules/rbac.bicep")
    custom = resources("modules/rbac.bicep", "Microsoft.Authorization/roleDefinitions")
    assert list(custom) == ["stateKekCreatorRole"]
    permissions = body(custom["stateKekCreatorRole"])["properties"]["permissions"]
    assert permissions == [{"actions": [], "notActions": [], "notDataActions": [],
                            "dataActions": ["Microsoft.KeyVault/vaults/keys/read",
                                            "Microsoft.KeyVault/vaults/keys/create/action"]}]
    found = set()
    for name, resource in resources("modules/rbac.bicep", "Microsoft.Authorization/roleAssignments").items():
        properties = body(resource)["properties"]
        role_name = properties["description"].split(":", 1)[0]
        if "operator" in properties["roleDefinitionId"]:  # the custom role above
            assert properties["roleDefinitionId"]["operator"]["operands"]["operand_1"] == "stateKekCreatorRole"
            assert (properties["principalId"], body(resource)["scope"]) == ("appPrincipalId", "vault")
            continue
        definition = properties["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id"
        assert definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role_id = member_of(definition["parameters"]["resource_name_1"], rbac["variables"])
        assert role_id == BUILT_IN_ROLES[role_name], f"{name}: {role_name}"
        scope = body(resource).get("scope", "resourceGroup")
        found.add((properties["principalId"], role_name, scope))
        assert properties["principalType"] == ("User" if properties["principalId"] == "deployerPrincipalId"
                                               else "ServicePrincipal")
    assert found == EXPECTED_ASSIGNMENTS


def test_the_function_app_is_flex_consumption_python_311_with_identity_based_deployment():
    plan = one("modules/functionapp.bicep", "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"tier": "FlexConsumption", "name": "FC1"} and plan["properties"]["reserved"] is True
    site = one("modules/functionapp.bicep", "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux" and site["identity"]["type"] == "UserAssigned"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "UserAssignedIdentity", "userAssignedIdentityResourceId": "identityId"}
    assert config["scaleAndConcurrency"]["instanceMemoryMB"] == "instanceMemoryMB"


def test_the_function_app_is_https_only_with_tls_12_and_no_basic_auth_publishing():
    site = one("modules/functionapp.bicep", "Microsoft.Web/sites")["properties"]
    assert site["httpsOnly"] is True
    assert site["siteConfig"]["minTlsVersion"] == "1.2" and site["siteConfig"]["ftpsState"] == "Disabled"
    assert site["siteConfig"]["remoteDebuggingEnabled"] is False
    policies = resources("modules/functionapp.bicep", "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()} == {"ftp": False, "scm": False}


def test_the_app_reaches_storage_with_its_identity_and_has_every_setting_it_requires():
    values = app_settings()
    assert values["AzureWebJobsStorage__accountName"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "storage", "operand_2": "name"}}}
    assert values["AzureWebJobsStorage__credential"] == "managedidentity"
    assert values["AzureWebJobsStorage__clientId"] == values["AZURE_CLIENT_ID"] == "identityClientId"
    assert "AzureWebJobsStorage" not in values and "CCR_STORAGE_CONNECTION" not in values
    assert not [name for name in values if "CONNECTION" in name and name != "APPLICATIONINSIGHTS_CONNECTION_STRING"
                and not name.startswith("CCR_STORAGE_CONNECTION__")]   # identity-based parts only
    # everything shared/settings.py refuses to start without is set (secrets as Key Vault references)
    assert set(settings.APP_SETTINGS) <= set(values)
    for secret in ("CCR_EVENTGRID_KEY", "CCR_PARTY_AUTH_SECRET"):
        assert values[secret].startswith("@Microsoft.KeyVault(SecretUri=")
    assert not any("listKeys" in json.dumps(value) or "AccountKey" in json.dumps(value) for value in values.values())
    assert "CCR_ACCESS_TOKEN" not in values and "CCR_EMULATOR_DIR" not in values and "CCR_LOCAL_PROFILE" not in values


def _endpoint(service: str) -> dict:
    """`storage.properties.primaryEndpoints.<service>` as pycep renders it."""
    def accessor(first, second):
        return {"operator": {"type": "property_accessor", "operands": {"operand_1": first, "operand_2": second}}}
    return accessor("storage", accessor("properties", accessor("primaryEndpoints", service)))


def test_the_blob_triggers_watch_the_data_connection_identity_based_as_event_grid_triggers():
    """Flex Consumption runs only EventGrid-source blob triggers; their connection is the data
    one, identity-based: the Python SDK binding reads __blobServiceUri, and a blob trigger's
    identity-based connection needs __queueServiceUri for its poison queue."""
    from tests.host.test_templates import index_in_process
    index = index_in_process(INFRA.parent)
    values = app_settings()
    for function in ("dataset_arrived", "model_arrived", "inference_batch_arrived"):
        trigger = index.entries[function].trigger
        assert trigger["source"] == "EventGrid" and trigger["connection"] == "CCR_STORAGE_CONNECTION"
    assert values["CCR_STORAGE_CONNECTION__blobServiceUri"] == _endpoint("blob")
    assert values["CCR_STORAGE_CONNECTION__queueServiceUri"] == _endpoint("queue")
    assert values["CCR_STORAGE_CONNECTION__credential"] == "managedidentity"
    assert values["CCR_STORAGE_CONNECTION__clientId"] == "identityClientId"


def test_the_storage_account_allows_no_shared_key_no_public_blobs_https_and_tls_12_only():
    account = one("modules/storage.bicep", "Microsoft.Storage/storageAccounts")["properties"]
    assert account["allowSharedKeyAccess"] is False
    assert account["supportsHttpsTrafficOnly"] is True
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False
    assert account["defaultToOAuthAuthentication"] is True


def test_the_data_containers_are_the_storage_names_and_private():
    containers = resources("modules/storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers")
    names = {body(c)["name"] for c in containers.values()} - {"deploymentContainerName"}
    assert names == {storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS,
                     storage_names.CONTRACTS, storage_names.RUNS}
    assert all(body(c)["properties"]["publicAccess"] == "None" for c in containers.values())
    topic = one("modules/storage.bicep", "Microsoft.EventGrid/systemTopics")["properties"]
    assert topic == {"source": {"operator": {"type": "property_accessor",
                                             "operands": {"operand_1": "storage", "operand_2": "id"}}},
                     "topicType": "Microsoft.Storage.StorageAccounts"}


def test_key_vault_is_premium_with_rbac_and_purge_protection():
    vault = one("modules/keyvault.bicep", "Microsoft.KeyVault/vaults")["properties"]
    assert vault["sku"] == {"family": "A", "name": "premium"}
    assert vault["enableRbacAuthorization"] is True
    assert vault["enablePurgeProtection"] is True and vault["enableSoftDelete"] is True
    assert "accessPolicies" not in vault


def test_the_registry_has_no_admin_user_and_no_anonymous_pull():
    registry = one("modules/registry.bicep", "Microsoft.ContainerRegistry/registries")["properties"]
    assert registry["adminUserEnabled"] is False and registry["anonymousPullEnabled"] is False


def _subscription(name: str) -> dict:
    return body(resources("subscriptions.bicep")[name])["properties"]


def test_blob_created_in_each_input_container_goes_to_its_blob_trigger():
    from tests.host.test_templates import index_in_process
    index = index_in_process(INFRA.parent)
    for name, container, function in (("datasetsArrived", storage_names.DATASETS, "dataset_arrived"),
                                      ("modelsArrived", storage_names.MODELS, "model_arrived"),
                                      ("inferenceBatchesArrived", storage_names.INFERENCE_BATCHES,
                                       "inference_batch_arrived")):
        subscription = _subscription(name)
        assert subscription["filter"] == {"includedEventTypes": ["Microsoft.Storage.BlobCreated"],
                                          "subjectBeginsWith": f"/blobServices/default/containers/{container}/"}
        destination = subscription["destination"]
        assert destination["endpointType"] == "WebHook"
        assert destination["properties"]["endpointUrl"] == \
            f"${{blobsWebhook}}?functionName=Host.Functions.{function}&code=${{blobsExtensionKey}}"
        trigger = index.entries[function].trigger
        assert trigger["type"] == "blobTrigger" and trigger["path"] == f"{container}/{{name}}"
    assert "runtime/webhooks/blobs" in parsed("subscriptions.bicep")["variables"]["blobsWebhook"]["value"]


def test_trainer_events_go_to_the_completion_trigger():
    from tests.host.test_templates import index_in_process
    subscription = _subscription("trainerFinished")
    assert subscription["filter"] == {"includedEventTypes": [events.TRAINER_COMPLETED, events.TRAINER_FAILED,
                                                         events.TRAINER_PROGRESS]}
    destination = subscription["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"] == "${app.id}/functions/trainer_finished"
    assert index_in_process(INFRA.parent).entries["trainer_finished"].trigger["type"] == "eventGridTrigger"


def test_azd_deploys_the_app_from_the_root_and_the_hook_reads_mains_outputs():
    azure_yaml = (INFRA.parent / "azure.yaml").read_text()
    assert re.search(r"^\s+project: \.\s*$", azure_yaml, re.M) and "host: function" in azure_yaml
    assert "language: python" in azure_yaml and "./infra/hooks/postdeploy.sh" in azure_yaml
    hook = (INFRA / "hooks" / "postdeploy.sh").read_text()
    outputs = set(parsed("main.bicep")["outputs"])
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", hook))
    assert used and used <= outputs
    passed = set(re.findall(r"(\w+)=\"\$", hook))
    assert passed == set(parsed("subscriptions.bicep")["parameters"])


def test_the_policy_input_template_matches_the_group_builder():
    """infra/hooks/trainer_group_template.py: what acipolicygen reads (docs/DEPLOY.md)."""
    import importlib.util

    from shared import container_group
    spec = importlib.util.spec_from_file_location("trainer_group_template", INFRA / "hooks" / "trainer_group_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = "crccr.azurecr.io/ccr-trainer@sha256:" + "a" * 64
    template = module.template(image)
    group = template["resources"][0]["properties"]
    assert group["sku"] == "Confidential" and group["confidentialComputeProperties"] == {"ccePolicy": ""}
    trainer, sidecar = group["containers"]
    assert trainer["name"] == container_group.TRAINER_CONTAINER_NAME and trainer["properties"]["image"] == image
    assert trainer["properties"]["command"] == list(container_group.TRAINER_COMMAND)
    env = {e["name"]: e.get("value", e.get("secureValue")) for e in trainer["properties"]["environmentVariables"]}
    assert set(env) == set(container_group.TRAINER_ENV_NAMES)
    assert env["CCR_SKR_URL"] == container_group.SKR_URL_IN_GROUP
    assert env[container_group.CONTRACT_DIGEST_ENV] == "[parameters('CCR_CONTRACT_DIGEST')]"
    assert all("defaultValue" not in p for p in template["parameters"].values())
    assert sidecar["name"] == container_group.SKR_CONTAINER_NAME
    assert sidecar["properties"]["image"] == skr_sidecar.configured().image    # the app's own sidecar


def test_the_app_runs_the_sidecar_the_deployment_names():
    """CCR_SKR_SIDECAR_IMAGE comes from main's skrSidecarImage (azd: the environment's
    CCR_SKR_SIDECAR_IMAGE), empty unless set, which the app reads as its digest-pinned default."""
    assert app_settings()["CCR_SKR_SIDECAR_IMAGE"] == "skrSidecarImage"
    parameters = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert parameters["skrSidecarImage"] == {"value": "${CCR_SKR_SIDECAR_IMAGE}"}
    assert "skrSidecarImage" in parsed("main.bicep")["parameters"]
