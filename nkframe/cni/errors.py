"""CNI errors: what the plugin prints on stdout (``{cniVersion, code, msg, details}``) when an
operation fails, with the codes the spec reserves (0-99) and ours (999)."""

from __future__ import annotations

from nkframe.errors import NkframeError

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50  # STATUS: cannot serve ADD
NOT_AVAILABLE_LIMITED = 51  # STATUS: and existing pods may have limited connectivity
INTERNAL = 999  # nkframe's own failures (the agent or kernel refused, a device name is taken...)


class CniError(NkframeError):
    """An operation failed; ``code`` is a CNI error code, ``msg`` a short summary the runtime
    shows, ``details`` the longer sentence: what failed, on which object, what to do."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(f"{msg}: {details}" if details else msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        return {"cniVersion": cni_version, "code": self.code, "msg": self.msg, "details": self.details}
