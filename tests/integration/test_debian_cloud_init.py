"""A stock Debian 12 image, with Debian's own cloud-init unedited, run through the whole
cloud: built by guest/debian/build.sh from the Debian mirror, added with `mallee-admin`,
launched with boto3 on a network whose router redirects 169.254.169.254 to the CLC.
cloud-init must take the platform for EC2 (the NC's SMBIOS data), find the metadata
service, install the key, set the hostname and run the user-data. Slow: about 90 s to
build once, and the boot of a full Debian under TCG."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.support.cluster import register
from tests.support.daemons import CcDaemon, ClcDaemon, NcDaemon, free_port
from tests.support.ec2 import new_public_key
from tests.support.guest import build_debian, wait_until
from tests.support.network import instance_network

USER_DATA = """#!/bin/sh
echo "MALLEE-USER-DATA host=$(hostname) key=$(cat /home/debian/.ssh/authorized_keys) END" \\
    > /dev/ttyS0
"""
# The serial console is read while the guest writes it, a character at a time: only a
# line that has reached its END is whole.
WHOLE_LINE = re.compile(r"MALLEE-USER-DATA (.*) END")


def test_debians_cloud_init_finds_the_cloud(
    nc_factory: Callable[..., NcDaemon],
    cc_factory: Callable[..., CcDaemon],
    clc_factory: Callable[..., ClcDaemon],
    tmp_path: Path,
) -> None:
    image = build_debian()
    port = free_port()
    with instance_network(tmp_path, port) as net:
        nc = nc_factory(public_bridge=net.bridge)
        cc = cc_factory()
        register(cc, nc)
        clc = clc_factory(
            listen="0.0.0.0",
            metadata_port=port,
            private_subnet=net.subnet,
            instance_types=["d1.small 1 512 2"],
        )
        clc.admin("cluster", "add", "zone-a", cc.url)
        emi = clc.add_image("debian-12", image)
        ec2 = clc.ec2("alice")
        public_key = new_public_key().decode()
        ec2.import_key_pair(KeyName="k", PublicKeyMaterial=public_key.encode())
        [instance] = ec2.run_instances(
            ImageId=emi, MinCount=1, MaxCount=1, KeyName="k", UserData=USER_DATA
        )["Instances"]
        instance_id = instance["InstanceId"]
        hostname = instance["PrivateDnsName"].split(".")[0]  # ip-10-77-N-M
        output = ""

        def user_data_ran() -> bool:
            nonlocal output
            output = ec2.get_console_output(InstanceId=instance_id).get("Output", "")
            return WHOLE_LINE.search(output) is not None

        try:
            wait_until(user_data_ran, 900, f"the user-data to run on {instance_id}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; the console:\n{output[-4000:]}") from None
        [line] = WHOLE_LINE.findall(output)
        assert f"host={hostname}" in line, line
        assert public_key.split()[1] in line, line  # the key cloud-init installed
        ec2.terminate_instances(InstanceIds=[instance_id])
        ec2.get_waiter("instance_terminated").wait(
            InstanceIds=[instance_id], WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
