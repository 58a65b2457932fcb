"""The local stack's Key Vault roles are the deployment's: at the vault's scope each identity
holds in the twin exactly the role definitions infra/modules/rbac.bicep assigns it there, the
trainer's identity is the one the groups carry, and the parties' role is the one docs/DEPLOY.md
has a party's administrator create. A drift in any of them fails here."""
from __future__ import annotations

import json
import re

from local_emulator import vault_rbac as rbac
from local_emulator.aci import USER_ASSIGNED_IDENTITY_ID
from local_emulator.stack import KEK_CREATOR_ROLE, TRAINER_IDENTITY_ID, VAULT_ID, add_party, local_vault_access
from shared.settings import PROJECT_ROOT
from tests.infra.bicep import body, member_of, parsed, resources


def _bicep_vault_roles() -> dict[str, set]:
    """principal parameter -> what rbac.bicep assigns it at the vault's scope: a built-in role's
    definition id, or a custom role's data actions (its id is a GUID of the resource group)."""
    variables = parsed("modules/rbac.bicep")["variables"]
    custom = {name: tuple(body(r)["properties"]["permissions"][0]["dataActions"])
              for name, r in resources("modules/rbac.bicep", "Microsoft.Authorization/roleDefinitions").items()}
    held: dict[str, set] = {}
    for resource in resources("modules/rbac.bicep", "Microsoft.Authorization/roleAssignments").values():
        if body(resource).get("scope") == "vault":
            properties = body(resource)["properties"]
            definition = properties["roleDefinitionId"]
            role = custom[definition["operator"]["operands"]["operand_1"]] if "operator" in definition else \
                member_of(definition["function"]["parameters"]["resource_name_1"], variables)
            held.setdefault(properties["principalId"], set()).add(role)
    return held


def _as_bicep(role: rbac.Role) -> str | tuple[str, ...]:
    return role.data_actions if role.id == KEK_CREATOR_ROLE.id else role.id


def test_the_stacks_vault_roles_are_the_ones_rbac_bicep_assigns_at_the_vault():
    bicep = _bicep_vault_roles()
    assert bicep == {"appPrincipalId": {rbac.KEY_VAULT_READER.id, KEK_CREATOR_ROLE.data_actions},
                     "trainerPrincipalId": {rbac.CRYPTO_SERVICE_RELEASE_USER.id}}
    access = local_vault_access("app-token", "trainer-token")
    for principal, token in (("appPrincipalId", "app-token"), ("trainerPrincipalId", "trainer-token")):
        held = access.assignments(access.principal(f"Bearer {token}"))
        assert {_as_bicep(role) for role, _ in held} == bicep[principal]
        assert {scope for _, scope in held} == {VAULT_ID}


def test_only_the_trainers_identity_may_release_and_the_groups_carry_it():
    access = local_vault_access("app-token", "trainer-token")
    party = add_party(access, "party-token")
    releasers = {token for token in ("app-token", "trainer-token", "party-token")
                 if any(rbac.role_allows(role, rbac.RELEASE)
                        for role, _ in access.assignments(access.principal(f"Bearer {token}")))}
    assert releasers == {"trainer-token"}
    assert not any(rbac.role_allows(role, rbac.DELETE) for role, _ in access.assignments(party))
    assert USER_ASSIGNED_IDENTITY_ID.match(TRAINER_IDENTITY_ID)


def test_the_parties_role_is_the_custom_role_docs_deploy_creates():
    text = (PROJECT_ROOT / "docs" / "DEPLOY.md").read_text()
    definition = re.search(r'az role definition create --role-definition "(\{.*?\})"\n', text, re.S).group(1)
    role = json.loads(definition.replace('\\"', '"').replace("$RG_ID", "/subscriptions/s/resourceGroups/rg"))
    assert role["Name"] == KEK_CREATOR_ROLE.name
    assert tuple(role["DataActions"]) == KEK_CREATOR_ROLE.data_actions and role["Actions"] == []
    assert f'--role "{KEK_CREATOR_ROLE.name}" --scope "$VAULT_ID"' in text
