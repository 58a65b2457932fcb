"""A hand-written expected policy (the `az confcom acipolicygen` schema, field by field) for a
fixed image and contract, and what binding the policy to the contract digest buys: host data
per contract, a template independent of the contract, and an ACI twin that refuses a group
whose trainer drops or changes CCR_CONTRACT_DIGEST."""
from __future__ import annotations

import base64
import hashlib

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerinstance.models import EnvironmentVariable

from shared.cce_policy import EnvRule, decode_policy, hostdata_of, policy_containers, with_required_env
from shared.container_group import (CONTRACT_DIGEST_ENV, TRAINER_CONTAINER_NAME, build_container_group,
                                    policy_template_sha256, training_cce_policy, training_hostdata,
                                    training_policy_template)
from tests.aci.conftest import LOCATION, RESOURCE_GROUP

pytestmark = pytest.mark.timeout(120)

LAYER = "0123456789abcdef" * 4
IMAGE = "ccr-trainer@sha256:" + LAYER
CONTRACT = "c0" * 32
OTHER_CONTRACT = "d1" * 32

# --- the expected text, written from the schema -------------------------------------------
# Capabilities: the default unprivileged set; sorted for user containers, in the tool's
# configuration order for the pause container.
CAPS_SORTED = ('["CAP_AUDIT_WRITE","CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FOWNER","CAP_FSETID","CAP_KILL",'
               '"CAP_MKNOD","CAP_NET_BIND_SERVICE","CAP_NET_RAW","CAP_SETFCAP","CAP_SETGID","CAP_SETPCAP",'
               '"CAP_SETUID","CAP_SYS_CHROOT"]')
CAPS_CONFIG_ORDER = ('["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_FSETID","CAP_FOWNER","CAP_MKNOD","CAP_NET_RAW",'
                     '"CAP_SETGID","CAP_SETUID","CAP_SETFCAP","CAP_SETPCAP","CAP_NET_BIND_SERVICE",'
                     '"CAP_SYS_CHROOT","CAP_KILL","CAP_AUDIT_WRITE"]')


def caps(listing: str) -> str:
    return ('"capabilities":{"ambient":[],"bounding":' + listing + ',"effective":' + listing
            + ',"inheritable":[],"permitted":' + listing + '}')


# The rules acipolicygen adds to every user container after the template's and the image's.
PLATFORM_RULES = ('{"pattern":"TERM=xterm","required":false,"strategy":"string"},'
                  '{"pattern":"(?i)(FABRIC)_.+=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"HOSTNAME=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"T(E)?MP=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"FabricPackageFileName=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"HostedServiceName=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"IDENTITY_API_VERSION=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"IDENTITY_HEADER=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"IDENTITY_SERVER_THUMBPRINT=.+","required":false,"strategy":"re2"},'
                  '{"pattern":"azurecontainerinstance_restarted_by=.+","required":false,"strategy":"re2"}')
RESOLV_CONF = ('"mounts":[{"destination":"/etc/resolv.conf","options":["rbind","rshared","rw"],'
               '"source":"sandbox:///tmp/atlas/resolvconf/.+","type":"bind"}]')
ANY_GROUP = '"group_idnames":[{"pattern":"","strategy":"any"}],"umask":"0022"'

TRAINER = (
    '{"allow_elevated":false,'
    '"allow_stdio_access":true,'
    + caps(CAPS_SORTED) + ','
    '"command":["python","-m","trainer_container"],'
    '"env_rules":['
    # the ARM template's variables: unknown values are parameters -> wildcards; the SKR URL is fixed
    '{"pattern":"CCR_BLOB_URLS=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_CA_BUNDLE=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_CONTRACT=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_CONTRACT_DIGEST=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_EVENTGRID_KEY=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_EVENTGRID_TOPIC_URL=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_KEYVAULT_URL=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_MAA_URL=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_RUN_ID=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_RUN_NONCE=.*","required":false,"strategy":"re2"},'
    '{"pattern":"CCR_SKR_URL=http://localhost:8080","required":false,"strategy":"string"},'
    # the image config's Env (trainer_container/Dockerfile on python:3.11-slim)
    '{"pattern":"PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",'
    '"required":false,"strategy":"string"},'
    '{"pattern":"LANG=C.UTF-8","required":false,"strategy":"string"},'
    '{"pattern":"PYTHONDONTWRITEBYTECODE=1","required":false,"strategy":"string"},'
    '{"pattern":"PYTHONUNBUFFERED=1","required":false,"strategy":"string"},'
    '{"pattern":"PIP_NO_CACHE_DIR=1","required":false,"strategy":"string"},'
    + PLATFORM_RULES + ','
    # the per-contract rule: exact value, required
    '{"pattern":"CCR_CONTRACT_DIGEST=' + CONTRACT + '","required":true,"strategy":"string"}'
    '],'
    '"exec_processes":[],'
    '"id":"' + IMAGE + '",'
    '"layers":["' + LAYER + '"],'
    + RESOLV_CONF + ','
    '"name":"trainer",'
    '"no_new_privileges":false,'
    '"seccomp_profile_sha256":"",'
    '"signals":[],'
    '"user":{' + ANY_GROUP + ',"user_idname":{"pattern":"trainer","strategy":"name"}},'
    '"working_dir":"/app"}')

SIDECAR = (
    '{"allow_elevated":false,'
    '"allow_stdio_access":true,'
    + caps(CAPS_SORTED) + ','
    '"command":["/skr.sh"],'
    '"env_rules":[{"pattern":"Port=8080","required":false,"strategy":"string"},' + PLATFORM_RULES + '],'
    '"exec_processes":[],'
    '"id":"mcr.microsoft.com/aci/skr@sha256:baa6acf093c011cb26799187b6a535e32bd8248f52dd2cd9c606732b8a23c112",'
    '"layers":[],'
    + RESOLV_CONF + ','
    '"name":"skr-sidecar",'
    '"no_new_privileges":false,'
    '"seccomp_profile_sha256":"",'
    '"signals":[],'
    '"user":{' + ANY_GROUP + ',"user_idname":{"pattern":"","strategy":"any"}},'
    '"working_dir":"/"}')

PAUSE = (
    '{"allow_elevated":false,'
    '"allow_stdio_access":true,'
    + caps(CAPS_CONFIG_ORDER) + ','
    '"command":["/pause"],'
    '"env_rules":['
    '{"pattern":"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",'
    '"required":true,"strategy":"string"},'
    '{"pattern":"TERM=xterm","required":false,"strategy":"string"}],'
    '"exec_processes":[],'
    '"layers":["16b514057a06ad665f92c02863aca074fd5976c755d26bff16365299169e8415"],'
    '"mounts":[],'
    '"name":"pause-container",'
    '"no_new_privileges":false,'
    '"seccomp_profile_sha256":"",'
    '"signals":[],'
    '"user":{' + ANY_GROUP + ',"user_idname":{"pattern":"","strategy":"any"}},'
    '"working_dir":"/"}')

EXPECTED = """package policy

import future.keywords.every
import future.keywords.in

api_version := "0.10.0"
framework_version := "0.2.3"

fragments := [
  {
    "feed": "mcr.microsoft.com/aci/aci-cc-infra-fragment",
    "includes": [
      "containers",
      "fragments"
    ],
    "issuer": "did:x509:0:sha256:I__iuL25oXEVFdTP_aBLx_eT1RPHbCQ_ECBQfYZpt9s::eku:1.3.6.1.4.1.311.76.59.1.3",
    "minimum_svn": "1"
  }
]

containers := [""" + TRAINER + "," + SIDECAR + "," + PAUSE + """]

allow_properties_access := true
allow_dump_stacks := false
allow_runtime_logging := false
allow_environment_variable_dropping := true
allow_unencrypted_scratch := false
allow_capability_dropping := true

mount_device := data.framework.mount_device
unmount_device := data.framework.unmount_device
mount_overlay := data.framework.mount_overlay
unmount_overlay := data.framework.unmount_overlay
create_container := data.framework.create_container
exec_in_container := data.framework.exec_in_container
exec_external := data.framework.exec_external
shutdown_container := data.framework.shutdown_container
signal_container_process := data.framework.signal_container_process
plan9_mount := data.framework.plan9_mount
plan9_unmount := data.framework.plan9_unmount
get_properties := data.framework.get_properties
dump_stacks := data.framework.dump_stacks
runtime_logging := data.framework.runtime_logging
load_fragment := data.framework.load_fragment
scratch_mount := data.framework.scratch_mount
scratch_unmount := data.framework.scratch_unmount

reason := {"errors": data.framework.errors}"""

CONTRACT_RULE = ',{"pattern":"CCR_CONTRACT_DIGEST=' + CONTRACT + '","required":true,"strategy":"string"}'


def test_policy_matches_the_hand_written_vector():
    policy = training_cce_policy(IMAGE, CONTRACT)
    assert decode_policy(policy) == EXPECTED
    assert base64.b64decode(policy) == EXPECTED.encode("ascii")
    assert hostdata_of(policy) == training_hostdata(IMAGE, CONTRACT) == hashlib.sha256(EXPECTED.encode()).hexdigest()


def test_template_is_the_vector_without_the_contract_rule_and_pins_its_own_digest():
    template = training_policy_template(IMAGE)
    assert EXPECTED.count(CONTRACT_RULE) == 1
    assert template == EXPECTED.replace(CONTRACT_RULE, "")
    assert CONTRACT not in template
    assert policy_template_sha256(IMAGE) == hashlib.sha256(template.encode()).hexdigest()
    # the template (what contracts pin) does not depend on the contract; the policy does
    assert decode_policy(training_cce_policy(IMAGE, OTHER_CONTRACT)).replace(
        CONTRACT_RULE.replace(CONTRACT, OTHER_CONTRACT), "") == template
    assert policy_template_sha256("ccr-trainer@sha256:" + "fe" * 32) != policy_template_sha256(IMAGE)


def test_host_data_differs_per_contract_digest():
    hostdata = {training_hostdata(IMAGE, digest) for digest in (CONTRACT, OTHER_CONTRACT, "0" * 64, "f" * 64)}
    assert len(hostdata) == 4
    assert training_hostdata(IMAGE, CONTRACT) == training_hostdata(IMAGE, CONTRACT)


def test_contract_rule_is_a_required_exact_string_in_the_trainer_only():
    trainer, sidecar, pause = policy_containers(training_cce_policy(IMAGE, CONTRACT))
    assert trainer.env_rules[-1] == EnvRule(f"{CONTRACT_DIGEST_ENV}={CONTRACT}", "string", True)
    assert [r for r in trainer.env_rules if r.required] == [trainer.env_rules[-1]]
    assert not any(CONTRACT_DIGEST_ENV in r.pattern for r in sidecar.env_rules + pause.env_rules)
    run = {"CCR_RUN_ID": "run-1", "CCR_SKR_URL": "http://localhost:8080"}
    assert trainer.env_problem({**run, CONTRACT_DIGEST_ENV: CONTRACT}) is None
    for environment in ({**run, CONTRACT_DIGEST_ENV: OTHER_CONTRACT}, run):
        problem = trainer.env_problem(environment)
        assert CONTRACT_DIGEST_ENV in problem and OTHER_CONTRACT not in problem and CONTRACT not in problem


@pytest.mark.parametrize("digest", ["C0" * 32, "c0" * 31, "c0" * 33, "g0" * 32, "", None])
def test_malformed_contract_digest_is_refused(digest):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        training_cce_policy(IMAGE, digest)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        build_container_group(IMAGE, digest, {}, LOCATION)


def test_callers_cannot_set_the_digest_themselves():
    with pytest.raises(ValueError, match=CONTRACT_DIGEST_ENV):
        build_container_group(IMAGE, CONTRACT, {CONTRACT_DIGEST_ENV: OTHER_CONTRACT}, LOCATION)
    group = build_container_group(IMAGE, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    env = {v.name: v for v in group.containers[0].environment_variables}
    assert env[CONTRACT_DIGEST_ENV].value == CONTRACT and env[CONTRACT_DIGEST_ENV].secure_value is None
    assert group.confidential_compute_properties.cce_policy == training_cce_policy(IMAGE, CONTRACT)


def test_with_required_env_changes_nothing_else_and_refuses_a_second_binding():
    template = training_policy_template(IMAGE)
    bound = with_required_env(template, IMAGE, CONTRACT_DIGEST_ENV, CONTRACT)
    assert bound == EXPECTED
    with pytest.raises(ValueError, match="already pins"):
        with_required_env(bound, IMAGE, CONTRACT_DIGEST_ENV, OTHER_CONTRACT)
    with pytest.raises(ValueError, match="exactly one container"):
        with_required_env(template, "ccr-trainer@sha256:" + "fe" * 32, CONTRACT_DIGEST_ENV, CONTRACT)
    with pytest.raises(ValueError, match="compact form"):
        with_required_env(template.replace('[{"allow_elevated"', '[ {"allow_elevated"', 1), IMAGE,
                          CONTRACT_DIGEST_ENV, CONTRACT)


# --- the ACI twin enforces the rule by value ------------------------------------------------

def _trainer_env(spec) -> list:
    return next(c for c in spec.containers if c.name == TRAINER_CONTAINER_NAME).environment_variables


def _refused(client, twin, name: str, spec) -> str:
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec).result()
    group = client.container_groups.get(RESOURCE_GROUP, name)
    assert group.provisioning_state == "Failed"
    assert all(c.instance_view.current_state.state == "Waiting" for c in group.containers)
    record = twin.runtime.get(group.id)
    assert record["pid"] is None and record["error"]["code"] == "CcePolicyViolation"
    assert not (twin.runtime.state_dir / "groups" / record["dir"] / "trainer.log").exists()
    return str(refused.value)


def test_twin_refuses_a_changed_contract_digest(client, twin, stand_in_image, sidecars):
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    next(v for v in _trainer_env(spec) if v.name == CONTRACT_DIGEST_ENV).value = OTHER_CONTRACT
    message = _refused(client, twin, "run-changed-digest", spec)
    assert CONTRACT_DIGEST_ENV in message and OTHER_CONTRACT not in message
    assert sidecars == []


def test_twin_refuses_a_dropped_contract_digest(client, twin, stand_in_image, sidecars):
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    env = _trainer_env(spec)
    env.remove(next(v for v in env if v.name == CONTRACT_DIGEST_ENV))
    assert CONTRACT_DIGEST_ENV in _refused(client, twin, "run-dropped-digest", spec)
    assert sidecars == []


def test_twin_refuses_another_contracts_policy(client, twin, stand_in_image, sidecars):
    """Same image, env of contract A, policy (and so host data) of contract B."""
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    spec.confidential_compute_properties.cce_policy = training_cce_policy(stand_in_image.ref, OTHER_CONTRACT)
    assert CONTRACT_DIGEST_ENV in _refused(client, twin, "run-other-contract", spec)
    assert sidecars == []


def test_twin_refuses_a_value_the_template_fixed(client, twin, stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_SKR_URL": "http://attacker:8080"}, LOCATION)
    assert "CCR_SKR_URL" in _refused(client, twin, "run-skr-url", spec)


def test_twin_runs_the_group_of_the_bound_contract(client, stand_in_image, sidecars):
    spec = build_container_group(stand_in_image.ref, CONTRACT, {"CCR_RUN_ID": "run-1"}, LOCATION)
    spec.containers[0].environment_variables.append(EnvironmentVariable(name="HOSTNAME", value="group-host"))
    group = client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-bound", spec).result()
    assert group.provisioning_state == "Succeeded" and len(sidecars) == 1
