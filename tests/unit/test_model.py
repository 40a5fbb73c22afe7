from mallee.common.capacity import VmType
from mallee.nc.model import EC2_STATE, ImageRef, Instance, NcState, NetConfig

EC2 = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48}


def test_every_nc_state_maps_to_ec2() -> None:
    assert set(EC2_STATE) == set(NcState)
    for name, code in EC2_STATE.values():
        assert EC2[name] == code


def test_staging_is_pending_and_teardown_is_shutting_down() -> None:
    assert EC2_STATE[NcState.STAGING] == ("pending", 0)
    assert EC2_STATE[NcState.TEARDOWN] == ("shutting-down", 32)


def instance() -> Instance:
    image = ImageRef("emi-12345678", "http://x/i", "sha256:" + "a" * 64, "qcow2")
    kernel = ImageRef("eki-12345678", "http://x/k", "sha256:" + "b" * 64)
    return Instance(
        "i-0123456789abcdef0",
        "r-01234567",
        "alice",
        VmType("m1.small", 1, 256, 2),
        image,
        kernel=kernel,
        net=NetConfig(private_mac="d0:0d:00:00:00:01", vlan=10),
    )


def test_record_round_trip() -> None:
    original = instance().with_state(NcState.RUNNING)
    assert Instance.from_record(original.to_record()) == original


def test_api_view_carries_both_states() -> None:
    view = instance().with_state(NcState.TEARDOWN, "user request").to_api()
    assert view["state"] == {"name": "shutting-down", "code": 32}
    assert view["nc_state"] == "teardown"
    assert view["state_reason"] == "user request"
    assert view["kernel_id"] == "eki-12345678" and view["ramdisk_id"] is None


def test_terminated_records_when() -> None:
    assert instance().with_state(NcState.TERMINATED).terminated_at is not None
