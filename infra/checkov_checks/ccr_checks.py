"""Checks the clean room relies on that checkov has no Bicep form of: loaded by
`checkov --external-checks-dir infra/checkov_checks` (tests/infra/test_checkov.py). They run in
checkov's own venv, never in the app's."""
from checkov.bicep.checks.resource.base_resource_value_check import BaseResourceValueCheck
from checkov.common.models.enums import CheckCategories


class _ValueCheck(BaseResourceValueCheck):
    def __init__(self, check_id: str, name: str, resource: str, key: str, expected):
        self._key, self._expected = key, expected
        super().__init__(name=name, id=check_id, categories=(CheckCategories.IAM,), supported_resources=(resource,))

    def get_inspected_key(self) -> str:
        return self._key

    def get_expected_value(self):
        return self._expected


STORAGE_NO_SHARED_KEY = _ValueCheck(
    "CKV_CCR_1", "Ensure the storage account allows no shared key (Entra ID and user-delegation SAS only)",
    "Microsoft.Storage/storageAccounts", "properties/allowSharedKeyAccess", False)
STORAGE_NO_PUBLIC_BLOBS = _ValueCheck(
    "CKV_CCR_2", "Ensure the storage account allows no anonymous (public) blob access",
    "Microsoft.Storage/storageAccounts", "properties/allowBlobPublicAccess", False)
KEY_VAULT_RBAC = _ValueCheck(
    "CKV_CCR_3", "Ensure the key vault authorizes with Azure RBAC, not access policies",
    "Microsoft.KeyVault/vaults", "properties/enableRbacAuthorization", True)
