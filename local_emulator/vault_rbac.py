"""Azure RBAC for the Key Vault twin: who a bearer token is, and which data actions its role
assignments allow on a key.

Claim: a caller may do to a key only what a role assigned to its principal, at the vault's
scope (or above) or the key's own, allows; as in a vault with `enableRbacAuthorization`, a
known caller without the data action gets 403 `Forbidden` / innererror `ForbiddenByRbac`
before anything else is looked at. Stops: the app's identity, a party's own token or a group
identity that lacks Key Vault Crypto Service Release User asking for a key release. Roles do
not bypass a key's release policy: the vault checks that after this.

Role definitions are Azure's built-in ones (ids and data actions from Microsoft's "Azure
built-in roles" reference), plus any custom role a deployment defines. Data actions match as
Azure matches them: `*` stands for any run of characters, case-insensitively, so Key Vault
Crypto Officer (`Microsoft.KeyVault/vaults/keys/*`) includes `keys/release/action`.
Tokens are never logged or echoed; principal object ids are not secrets.
"""
from __future__ import annotations

import hmac
import re
import threading
import uuid
from dataclasses import dataclass

KEYS = "Microsoft.KeyVault/vaults/keys"
READ = f"{KEYS}/read"
CREATE = f"{KEYS}/create/action"
IMPORT = f"{KEYS}/import/action"
DELETE = f"{KEYS}/delete"
PURGE = f"{KEYS}/purge/action"
RELEASE = f"{KEYS}/release/action"


@dataclass(frozen=True)
class Role:
    id: str                      # the role definition's GUID (roleDefinitions/<id>)
    name: str
    data_actions: tuple[str, ...]


KEY_VAULT_ADMINISTRATOR = Role("00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator",
                               ("Microsoft.KeyVault/vaults/*",))
KEY_VAULT_READER = Role("21090545-7ca7-4776-b22c-e363652d74d2", "Key Vault Reader",
                        ("Microsoft.KeyVault/vaults/*/read", "Microsoft.KeyVault/vaults/secrets/readMetadata/action"))
CRYPTO_OFFICER = Role("14b46e9e-c2b7-41b4-b07b-48a6ebf60603", "Key Vault Crypto Officer",
                      (f"{KEYS}/*", "Microsoft.KeyVault/vaults/keyrotationpolicies/*"))
CRYPTO_USER = Role("12338af0-0e69-4776-bea7-57ae8d297424", "Key Vault Crypto User",
                   (READ, f"{KEYS}/update/action", f"{KEYS}/backup/action", f"{KEYS}/encrypt/action",
                    f"{KEYS}/decrypt/action", f"{KEYS}/wrap/action", f"{KEYS}/unwrap/action", f"{KEYS}/sign/action",
                    f"{KEYS}/verify/action"))
CRYPTO_SERVICE_ENCRYPTION_USER = Role("e147488a-f6f5-4113-8e2d-b22465e65bf6",
                                      "Key Vault Crypto Service Encryption User",
                                      (READ, f"{KEYS}/wrap/action", f"{KEYS}/unwrap/action"))
CRYPTO_SERVICE_RELEASE_USER = Role("08bbd89e-9f13-488c-ac41-acfcb10c90ab", "Key Vault Crypto Service Release User",
                                   (RELEASE,))
BUILT_IN_ROLES = (KEY_VAULT_ADMINISTRATOR, KEY_VAULT_READER, CRYPTO_OFFICER, CRYPTO_USER,
                  CRYPTO_SERVICE_ENCRYPTION_USER, CRYPTO_SERVICE_RELEASE_USER)
ROLE_DEFINITION_ID = re.compile(r"^(?:.*/providers/Microsoft\.Authorization/roleDefinitions/)?"
                                r"(?P<guid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$", re.IGNORECASE)


class NotAuthenticated(Exception):
    """No known principal holds this bearer token (Key Vault answers 401 with its challenge)."""


class ForbiddenByRbac(Exception):
    """A known principal without the data action at the resource's scope."""


def _action_pattern(data_action: str) -> re.Pattern:
    return re.compile("^" + ".*".join(re.escape(part) for part in data_action.split("*")) + "$", re.IGNORECASE)


def role_allows(role: Role, data_action: str) -> bool:
    return any(_action_pattern(granted).match(data_action) for granted in role.data_actions)


def _covers(scope: str, resource: str) -> bool:
    """An assignment at `scope` applies to `resource` at or below it (ARM ids, case-blind)."""
    scope, resource = scope.rstrip("/").lower(), resource.lower()
    return scope == "" or resource == scope or resource.startswith(scope + "/")


class VaultAccess:
    """Principals (bearer token -> object id) and role assignments (object id, role, scope) of
    one vault, whose ARM resource id is `vault_id`. The stack assigns roles as infra/ does."""

    def __init__(self, vault_id: str):
        self.vault_id = vault_id
        self._roles = {role.id: role for role in BUILT_IN_ROLES}
        self._principals: list[tuple[str, str]] = []            # (token, object id)
        self._assignments: list[tuple[str, str, str]] = []      # (object id, role id, scope)
        self._lock = threading.Lock()
        # Denied requests, as Key Vault's audit log records them: (object id, data action, resource).
        self.denials: list[tuple[str, str, str]] = []

    def key_scope(self, key_name: str) -> str:
        return f"{self.vault_id}/keys/{key_name}"

    def define_role(self, name: str, data_actions: tuple[str, ...], role_id: str | None = None) -> Role:
        """A custom role (as `az role definition create` makes one)."""
        role = Role(role_id or str(uuid.uuid4()), name, tuple(data_actions))
        with self._lock:
            self._roles[role.id] = role
        return role

    def add_principal(self, token: str, object_id: str | None = None) -> str:
        """Register the principal a token stands for (Entra ID's `oid`); its object id."""
        if not token:
            raise ValueError("a principal needs a non-empty bearer token")
        object_id = object_id or str(uuid.uuid4())
        with self._lock:
            self._principals.append((token, object_id))
        return object_id

    def assign(self, object_id: str, role: Role | str, scope: str | None = None) -> None:
        """Assign `role` (a Role, or a role definition id in either form) to a principal at
        `scope` (default: the vault)."""
        role_id = role.id if isinstance(role, Role) else self._role_id(role)
        with self._lock:
            if role_id not in self._roles:
                raise ValueError(f"no role definition {role_id}")
            self._assignments.append((object_id, role_id, scope or self.vault_id))

    @staticmethod
    def _role_id(text: str) -> str:
        match = ROLE_DEFINITION_ID.match(text or "")
        if not match:
            raise ValueError("a role definition id is a GUID or '/providers/Microsoft.Authorization/roleDefinitions/<GUID>'")
        return match.group("guid").lower()

    def assignments(self, object_id: str) -> list[tuple[Role, str]]:
        """(role, scope) of each assignment held by `object_id`."""
        with self._lock:
            return [(self._roles[role_id], scope) for principal, role_id, scope in self._assignments
                    if principal == object_id]

    def principal(self, authorization: str | None) -> str:
        """The object id behind an `Authorization: Bearer <token>` header (constant-time)."""
        scheme, _, given = (authorization or "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and given.strip():
            for token, object_id in list(self._principals):
                if hmac.compare_digest(given.strip().encode(), token.encode()):
                    found = object_id
        if found is None:
            raise NotAuthenticated()
        return found

    def require(self, object_id: str, data_action: str, key_name: str | None = None) -> None:
        """Nothing when a role assigned to `object_id` allows `data_action` on the key (or, with
        no key, the vault); ForbiddenByRbac otherwise, with Key Vault's message."""
        resource = self.key_scope(key_name) if key_name else self.vault_id
        with self._lock:
            held = [self._roles[role_id] for principal, role_id, scope in self._assignments
                    if principal == object_id and _covers(scope, resource)]
        if any(role_allows(role, data_action) for role in held):
            return
        with self._lock:
            self.denials.append((object_id, data_action, resource))
        raise ForbiddenByRbac(
            "Caller is not authorized to perform action on resource.\r\n"
            f"Caller: oid={object_id}\r\nAction: '{data_action}'\r\nResource: '{resource.lower()}'\r\n"
            "Assignment: (not found)\r\nDecisionReason: null\r\n")


LOCAL_VAULT_ID = ("/subscriptions/00000000-0000-0000-0000-00000000c0de/resourceGroups/ccr-local/providers/"
                  "Microsoft.KeyVault/vaults/kv-ccr-local")


def one_principal(token: str, *roles: Role, vault_id: str = LOCAL_VAULT_ID) -> VaultAccess:
    """A vault whose one principal (`token`) holds `roles` at the vault's scope: a test's vault."""
    access = VaultAccess(vault_id)
    holder = access.add_principal(token)
    for role in roles:
        access.assign(holder, role)
    return access
