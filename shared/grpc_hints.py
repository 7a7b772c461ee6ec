"""What to check when a gRPC connection to the controller fails: one place for the agent and the admin CLI.

grpcio reports a wrong CA as a raw ``CERTIFICATE_VERIFY_FAILED``/``BAD_SIGNATURE`` and plaintext sent to the
TLS port as ``Socket closed``; these turn such details into a sentence that names the flag to fix.
"""

from __future__ import annotations

_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate", "tsi_")


def explain_unavailable(details: str, address: str, ca_label: str = "", insecure: bool = False) -> str:
    """A message for an UNAVAILABLE status from ``address``, saying what to check."""
    lowered = details.lower()
    if "wrong_version_number" in lowered or "packet_length_too_long" in lowered:
        return (
            f"the controller at {address} does not speak TLS (started with --insecure?): pass --insecure to "
            f"talk to a plaintext development controller [{details.strip()}]"
        )
    if any(marker in lowered for marker in _TLS_MARKERS):
        return (
            f"TLS handshake with the controller at {address} failed: its certificate is not signed by the CA "
            f"this side trusts ({ca_label or 'the pinned CA'}). Check --ca-cert (the controller's "
            f"<data-dir>/tls/ca.pem; `slmops tokens create` prints its fingerprint) [{details.strip()}]"
        )
    if insecure and "socket closed" in lowered:
        return (
            f"the controller at {address} closed the plaintext connection: it serves TLS. Drop --insecure and "
            "pass --ca-cert with the controller's <data-dir>/tls/ca.pem"
        )
    if "connection refused" in lowered:
        return (
            f"nothing listens at {address}: is the controller running (`slmops controller serve`), and is "
            "--controller (SLMOPS_CONTROLLER) right?"
        )
    return f"controller unreachable at {address}: {details.strip()}"
