"""TLS credentials and client authentication for the gRPC wire.

- TLS: the server presents `--tls-cert/--tls-key`; with `--tls-ca` it also requires client
  certificates signed by that CA (mutual TLS). Clients verify the server with `--tls-ca` and may
  present their own `--tls-cert/--tls-key`.
- Tokens: a shared token (`--token` or THINWIRE_TOKEN) or a tokens file mapping client ids to
  their own secrets. Clients send `authorization: Bearer <token>` metadata on every call; an
  interceptor refuses missing or wrong tokens with UNAUTHENTICATED before any handler runs, and
  the servicer checks that the client id in a request is the one the token belongs to
  (PERMISSION_DENIED otherwise), so one client cannot push for another.
- Running without TLS needs an explicit `--insecure` and logs a warning.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from thinwire.errors import ConfigError

log = logging.getLogger("thinwire.security")

TOKEN_ENV = "THINWIRE_TOKEN"
AUTH_KEY = "authorization"
CLIENT_KEY = "x-thinwire-client"
ANY = -1                               # identity of a shared-token caller: any client id


def add_tls_arguments(parser, *, server: bool) -> None:
    who = "server" if server else "client"
    g = parser.add_argument_group("security")
    g.add_argument("--tls-cert", metavar="PEM", help=f"this {who}'s TLS certificate")
    g.add_argument("--tls-key", metavar="PEM", help=f"this {who}'s TLS private key")
    g.add_argument("--tls-ca", metavar="PEM",
                   help="CA that signs client certificates (enables mutual TLS)" if server
                   else "CA that signed the server certificate")
    g.add_argument("--insecure", action="store_true", help="plaintext gRPC without TLS (development only)")
    if server:
        g.add_argument("--token", metavar="SECRET", default=None,
                       help=f"shared client token (default: ${TOKEN_ENV} if set)")
        g.add_argument("--tokens-file", metavar="FILE",
                       help="per-client secrets: JSON {\"client_id\": \"secret\"} or lines 'client_id secret'")
    else:
        g.add_argument("--token", metavar="SECRET", default=None,
                       help=f"client token, shared or this client's own (default: ${TOKEN_ENV})")
        g.add_argument("--tokens-file", metavar="FILE",
                       help="per-client secrets file; each virtual client sends its own secret")
        g.add_argument("--tls-server-name", metavar="NAME",
                       help="host name to verify in the server certificate (default: the --server host)")


def _read(field_name: str, path: str | None) -> bytes:
    if not path:
        raise ConfigError(field_name, "a file path is required")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(field_name, f"cannot read {path!r} ({e.strerror})", "a readable PEM file") from None


def _read_certs(field_name: str, path: str):
    """PEM certificates of `path` (gRPC itself only fails later, as a port that cannot listen)."""
    from cryptography import x509

    data = _read(field_name, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(field_name, f"{path!r} holds no readable PEM certificate", "a PEM certificate file "
                          "(BEGIN CERTIFICATE), e.g. from `thinwire certs`")
    return data, certs


def _read_key_pair(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """(key PEM, certificate chain PEM), checked: both parse and the key belongs to the certificate."""
    from cryptography.hazmat.primitives import serialization

    cert_pem, certs = _read_certs("tls_cert", cert_path)
    key_pem = _read("tls_key", key_path)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("tls_key", f"{key_path!r} is not an unencrypted PEM private key ({e})",
                          "a PEM private key without a passphrase, e.g. from `thinwire certs`") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != certs[0].public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise ConfigError("tls_key", f"{key_path!r} does not belong to the certificate {cert_path!r}",
                          "the private key the certificate was issued for")
    return key_pem, cert_pem


def read_tokens_file(path: str) -> dict[int, str]:
    """Client id -> secret, from JSON or 'id secret' lines (# comments allowed)."""
    text = _read("tokens_file", path).decode("utf-8", "replace")
    out: dict[int, str] = {}
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
            items = list(data.items())
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.replace(":", " ").replace("=", " ").split()
                if len(parts) != 2:
                    raise ValueError(f"line {n} is not 'client_id secret'")
                items.append((parts[0], parts[1]))
        for k, v in items:
            if not isinstance(v, str) or len(v) < 8:
                raise ValueError(f"secret of client {k} must be a string of at least 8 characters")
            out[int(k)] = v
    except (ValueError, json.JSONDecodeError) as e:
        raise ConfigError("tokens_file", f"{path}: {e}", "JSON {\"0\": \"secret\"} or lines 'client_id secret'") from None
    if not out:
        raise ConfigError("tokens_file", f"{path} holds no client secrets")
    if len(set(out.values())) != len(out):
        raise ConfigError("tokens_file", f"{path}: two clients share a secret", "a distinct secret per client")
    return out


# -- server side ----------------------------------------------------------------------------------
@dataclass
class Authenticator:
    """Maps a presented token to an identity: ANY (shared token) or a client id."""

    shared: str | None = None
    per_client: dict[int, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.shared) or bool(self.per_client)

    def __post_init__(self) -> None:
        # Per-client secrets by their sha256: one lookup per call whatever the number of clients
        # (a dict probe on a digest reveals nothing usable about a secret).
        self._by_digest = {hashlib.sha256(s.encode()).digest(): cid for cid, s in self.per_client.items()}

    def identify(self, token: str | None) -> int | None:
        """ANY, a client id, or None when the token is wrong or missing."""
        if not token:
            return None
        if self.shared and hmac.compare_digest(token.encode(), self.shared.encode()):
            return ANY
        cid = self._by_digest.get(hashlib.sha256(token.encode()).digest())
        if cid is not None and hmac.compare_digest(token.encode(), self.per_client[cid].encode()):
            return cid
        return None

    def allows(self, token: str | None, client_id: int) -> bool:
        """Whether `token` (shared, or client_id's own) may act for client_id."""
        if not token:
            return False
        if self.shared and hmac.compare_digest(token.encode(), self.shared.encode()):
            return True
        secret = self.per_client.get(client_id)
        return secret is not None and hmac.compare_digest(token.encode(), secret.encode())


def bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == AUTH_KEY and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token before they reach the servicer."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token (send 'authorization: Bearer ...')")

        def deny_stream(request_iterator, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token (send 'authorization: Bearer ...')")

        self._deny = {
            (False, False): grpc.unary_unary_rpc_method_handler(deny),
            (True, False): grpc.stream_unary_rpc_method_handler(deny_stream),
            (False, True): grpc.unary_stream_rpc_method_handler(deny),
            (True, True): grpc.stream_stream_rpc_method_handler(deny_stream),
        }

    def intercept_service(self, continuation, handler_call_details):
        if self.auth.identify(bearer(handler_call_details.invocation_metadata)) is not None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._deny[(handler.request_streaming, handler.response_streaming)]


def check_identity(auth: Authenticator, context, client_id: int) -> None:
    """Abort with PERMISSION_DENIED when the caller's token belongs to another client id."""
    if not auth.enabled:
        return
    who = auth.identify(bearer(context.invocation_metadata()))
    if who is None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")
    if who != ANY and who != client_id:
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"token belongs to client {who}, not client {client_id}")


@dataclass
class ServerSecurity:
    credentials: grpc.ServerCredentials | None
    auth: Authenticator
    interceptors: list[Any]

    @property
    def scheme(self) -> str:
        return "tls" if self.credentials is not None else "insecure"


def server_security(args) -> ServerSecurity:
    """Build TLS credentials and the auth interceptor from `thinwire server` flags."""
    cert, key, ca = getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None)
    insecure = bool(getattr(args, "insecure", False))
    creds = None
    if cert or key:
        if insecure:
            raise ConfigError("insecure", "--insecure conflicts with --tls-cert/--tls-key", "one of them")
        if not (cert and key):
            raise ConfigError("tls_key" if cert else "tls_cert", "TLS needs both --tls-cert and --tls-key")
        creds = grpc.ssl_server_credentials([_read_key_pair(cert, key)],
                                            root_certificates=_read_certs("tls_ca", ca)[0] if ca else None,
                                            require_client_auth=bool(ca))
    elif ca:
        raise ConfigError("tls_ca", "--tls-ca on the server needs --tls-cert and --tls-key too")
    elif not insecure:
        raise ConfigError("tls_cert", "no TLS certificate given",
                          "--tls-cert/--tls-key (make them with `thinwire certs`) or --insecure for plaintext")
    else:
        log.warning("insecure mode: gRPC traffic is plaintext and not authenticated by TLS")
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    tokens_file = getattr(args, "tokens_file", None)
    auth = Authenticator(shared=token, per_client=read_tokens_file(tokens_file) if tokens_file else {})
    if token is not None and len(token) < 8:
        raise ConfigError("token", "token is shorter than 8 characters", "a secret of at least 8 characters")
    if not auth.enabled:
        log.warning("no client authentication: any client that reaches the port can join "
                    "(use --token, $%s or --tokens-file)", TOKEN_ENV)
    return ServerSecurity(creds, auth, [AuthInterceptor(auth)] if auth.enabled else [])


# -- client side ----------------------------------------------------------------------------------
@dataclass
class ClientSecurity:
    credentials: grpc.ChannelCredentials | None
    server_name: str | None = None
    token: str | None = None
    per_client: dict[int, str] = field(default_factory=dict)

    def token_for(self, client_id: int) -> str | None:
        return self.per_client.get(client_id, self.token)

    def metadata(self, client_id: int) -> tuple[tuple[str, str], ...]:
        tok = self.token_for(client_id)
        md = ((CLIENT_KEY, str(client_id)),)
        return md + ((AUTH_KEY, f"Bearer {tok}"),) if tok else md

    def channel_options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def client_security(args) -> ClientSecurity:
    cert, key, ca = getattr(args, "tls_cert", None), getattr(args, "tls_key", None), getattr(args, "tls_ca", None)
    insecure = bool(getattr(args, "insecure", False))
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    tokens_file = getattr(args, "tokens_file", None)
    per_client = read_tokens_file(tokens_file) if tokens_file else {}
    if ca or cert or key:
        if insecure:
            raise ConfigError("insecure", "--insecure conflicts with --tls-* flags", "one of them")
        if bool(cert) != bool(key):
            raise ConfigError("tls_key" if cert else "tls_cert", "a client certificate needs both --tls-cert and --tls-key")
        pair = _read_key_pair(cert, key) if cert else (None, None)
        creds = grpc.ssl_channel_credentials(root_certificates=_read_certs("tls_ca", ca)[0] if ca else None,
                                             private_key=pair[0], certificate_chain=pair[1])
        return ClientSecurity(creds, getattr(args, "tls_server_name", None), token, per_client)
    if not insecure:
        raise ConfigError("tls_ca", "no TLS CA given",
                          "--tls-ca (the CA from `thinwire certs`) or --insecure for plaintext")
    log.warning("insecure mode: gRPC traffic is plaintext")
    return ClientSecurity(None, None, token, per_client)


def open_channel(target: str, sec: ClientSecurity, options: list) -> grpc.Channel:
    opts = list(options) + sec.channel_options()
    if sec.credentials is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, sec.credentials, options=opts)


__all__ = ["Authenticator", "AuthInterceptor", "ServerSecurity", "ClientSecurity", "server_security",
           "client_security", "check_identity", "open_channel", "read_tokens_file", "add_tls_arguments", "ANY",
           "TOKEN_ENV"]
