"""Errors as types: each carries the code callers see and the HTTP status.

Domain code raises these; one handler per daemon (``rpc.init_app``) renders them as
``{"error": {"code", "message", "request_id"}}``. Clients turn such bodies back into
``RemoteError`` carrying the same code, so a CC can relay an NC's error unchanged.
"""


class MalleeError(Exception):
    code = "InternalError"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MalformedRequest(MalleeError):
    """The body is not JSON, or not the JSON the operation takes."""

    code = "MalformedRequest"
    status = 400


class InvalidParameter(MalleeError):
    """Well-formed, but a value cannot be honoured (e.g. a disk too small for its image)."""

    code = "InvalidParameterValue"
    status = 400


class IncorrectInstanceState(MalleeError):
    """The operation does not apply to the instance in its current state."""

    code = "IncorrectInstanceState"
    status = 409


class ClientCertificateRequired(MalleeError):
    code = "ClientCertificateRequired"
    status = 401


class PeerNotAllowed(MalleeError):
    """A valid certificate of the cloud, but of a component this daemon does not serve."""

    code = "PeerNotAllowed"
    status = 403


class NotFound(MalleeError):
    code = "NotFound"
    status = 404


class InstanceNotFound(NotFound):
    code = "InvalidInstanceID.NotFound"


class NetworkNotFound(NotFound):
    code = "InvalidNetwork.NotFound"


class SecurityGroupNotFound(NotFound):
    code = "InvalidGroup.NotFound"


class NodeNotFound(NotFound):
    code = "InvalidNode.NotFound"


class NodeAlreadyRegistered(MalleeError):
    code = "InvalidNode.Duplicate"
    status = 409


class NodeInUse(MalleeError):
    code = "NodeInUse"
    status = 409


class InstanceAlreadyExists(MalleeError):
    code = "InvalidInstanceID.Duplicate"
    status = 409


class InsufficientResources(MalleeError):
    code = "InsufficientInstanceCapacity"
    status = 409


class NetworkNotStarted(MalleeError):
    code = "NetworkNotStarted"
    status = 409


class NetworkInUse(MalleeError):
    code = "NetworkInUse"
    status = 409


class SecurityGroupInUse(MalleeError):
    code = "DependencyViolation"
    status = 409


class NetworkSetupFailed(MalleeError):
    """The host refused a change to its network (netlink or nft); its words are kept."""

    code = "NetworkSetupFailed"
    status = 500


class ImageFetchFailed(MalleeError):
    """The image URL could not be downloaded (HTTP error, refused, timeout)."""

    code = "ImageFetchFailed"
    status = 422


class ImageDigestMismatch(MalleeError):
    code = "ImageDigestMismatch"
    status = 422


class ImageTooLarge(MalleeError):
    code = "ImageTooLarge"
    status = 422


class ImageRejected(MalleeError):
    """The image is not one the NC will run (e.g. a qcow2 naming a backing file)."""

    code = "ImageRejected"
    status = 422


class LaunchFailed(MalleeError):
    """Something unforeseen failed while starting an instance; all of it was undone."""

    code = "LaunchFailed"
    status = 500


class HypervisorError(MalleeError):
    """libvirt refused or failed an operation; the message carries libvirt's words."""

    code = "HypervisorError"
    status = 502


class HypervisorUnavailable(MalleeError):
    """libvirt does not answer: a fault of the node, not of the request."""

    code = "HypervisorUnavailable"
    status = 503


class NodesUnavailable(MalleeError):
    """The cluster is short of room because nodes that would have it are not up."""

    code = "ServiceUnavailable"
    status = 503


class HostCommandFailed(MalleeError):
    """A program of the node (qemu-img, mkfs, ip) failed or ran out of time: the node's
    fault. The message names only the program: its command line and stderr, which name
    host paths, are kept here for the caller and written to the node's log."""

    code = "HostCommandFailed"
    status = 500

    def __init__(
        self, message: str, command: tuple[str, ...], stderr: str, exit_status: int | None
    ) -> None:
        super().__init__(message)
        self.command = command
        self.stderr = stderr
        self.exit_status = exit_status  # None: it ran out of time or could not start
