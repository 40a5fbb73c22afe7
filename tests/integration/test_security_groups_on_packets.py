"""Security groups, changed with the aws CLI, on real packets: two tiny guests run by the
whole cloud (CLC, CC, two NCs), the network's router namespace as the "public" side, the
guests' own shells (on their serial consoles) for what they send. Each change holds when
its command returns: the CLC answers once the nodes enforce it."""

from __future__ import annotations

from pathlib import Path

from tests.support.aws import CLIS, Aws
from tests.support.cluster import NetworkedCloud
from tests.support.guest import MARKER, GuestShell, wait_until
from tests.support.network import connect, dropped, echoes, hanging_up

ECHO_PORT = 8080
ROUTER_PORT = 9000


def port_rule(group: str, port: int, peer: list[str]) -> list[str]:
    return ["--group-name", group, "--protocol", "tcp", "--port", str(port), *peer]


def test_groups_rules_and_their_changes_hold_on_packets(
    networked_cloud: NetworkedCloud, libvirtd: str, tmp_path: Path
) -> None:
    clc, emi, ncs, net, cc = networked_cloud
    clc.admin("user", "create", "alice", "--bundle", str(tmp_path / "alice"))
    aws = Aws(CLIS["v2"], tmp_path / "alice", clc.url)
    for group in ("web", "app"):
        aws("create-security-group", "--group-name", group, "--description", group)

    def run_in(group: str) -> str:
        ran = aws("run-instances", "--image-id", emi, "--security-groups", group)
        return str(ran["Instances"][0]["InstanceId"])

    web_id, app_id = run_in("web"), run_in("app")
    aws("wait", "instance-running", "--instance-ids", web_id, app_id)
    described = aws("describe-instances", "--instance-ids", web_id, app_id)
    address = {
        i["InstanceId"]: i["PrivateIpAddress"]
        for r in described["Reservations"]
        for i in r["Instances"]
    }
    for instance_id in (web_id, app_id):

        def booted(instance_id: str = instance_id) -> bool:
            answer = aws("get-console-output", "--instance-id", instance_id)
            return MARKER in answer.get("Output", "")

        wait_until(booted, 240, f"{MARKER} on the console of {instance_id}")
    web, app = GuestShell(libvirtd, web_id), GuestShell(libvirtd, app_id)
    app_reaches_web = f"echo hi | nc -w 2 {address[web_id]} {ECHO_PORT} | grep -q hi"
    app_reaches_router = f"nc -w 2 {net.gateway} {ROUTER_PORT} < /dev/null"
    try:
        with hanging_up(net.netns, ROUTER_PORT):
            assert web.run(f"nc -ll -p {ECHO_PORT} -e cat &")[0] == 0
            # A new group lets nothing in.
            assert dropped(net.netns, address[web_id], ECHO_PORT)
            assert app.run(app_reaches_web)[0] != 0

            # A rule by CIDR opens the port to the router, and to no one else.
            router = ["--cidr", f"{net.gateway}/32"]
            aws("authorize-security-group-ingress", *port_rule("web", ECHO_PORT, router))
            connection = connect(net.netns, address[web_id], ECHO_PORT)
            assert connection is not None and echoes(connection)
            assert app.run(app_reaches_web)[0] != 0

            # A group-to-group rule lets the members of app in.
            members = ["--source-group", "app"]
            aws("authorize-security-group-ingress", *port_rule("web", ECHO_PORT, members))
            assert app.run(app_reaches_web)[0] == 0

            # The CC killed and restarted: the rules hold meanwhile, and it changes them again.
            cc.kill9()
            assert echoes(connection) and app.run(app_reaches_web)[0] == 0
            cc.start()

            # Revoking the CIDR rule cuts the router's open flow; app's members still reach.
            aws("revoke-security-group-ingress", *port_rule("web", ECHO_PORT, router))
            assert not echoes(connection)
            connection.close()
            assert dropped(net.netns, address[web_id], ECHO_PORT)
            assert app.run(app_reaches_web)[0] == 0

            # Egress: app may open connections anywhere, until its rule goes.
            assert app.run(app_reaches_router)[0] == 0
            everywhere = "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]"
            [app_group] = aws("describe-security-groups", "--group-names", "app")["SecurityGroups"]
            aws(
                "revoke-security-group-egress",
                "--group-id",
                app_group["GroupId"],
                "--ip-permissions",
                everywhere,
            )
            assert app.run(app_reaches_router)[0] != 0
            assert app.run(app_reaches_web)[0] != 0
    finally:
        web.close()
        app.close()
    aws("terminate-instances", "--instance-ids", web_id, app_id)
    aws("wait", "instance-terminated", "--instance-ids", web_id, app_id)
    wait_until(lambda: not any(nc.domains() for nc in ncs), 60, "the domains to go")
