"""Operator mistakes get one line naming the field and exit status 2, never a traceback (issue 12)."""
from __future__ import annotations

import argparse

import pytest

from thinwire.wire import certs
from thinwire.cli import main
from thinwire.errors import ConfigError
from thinwire.rundir import make_dir
from thinwire.wire.security import client_security, server_security


def _one_line_error(capsys, argv, field):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and f"{field}:" in err, err
    return err


def test_out_dir_under_a_regular_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="^out_dir: .* under the regular file"):
        make_dir("out_dir", f / "run")
    with pytest.raises(ConfigError, match="^out_dir: .* is the regular file"):
        make_dir("out_dir", f)
    assert make_dir("out_dir", tmp_path / "a" / "b").is_dir()
    _one_line_error(capsys, ["certs", "--out", str(f / "certs")], "out")
    _one_line_error(capsys, ["server", "--insecure", "--port", "0", "--out-dir", str(f / "runs"), "--rounds", "1"],
                    "out_dir")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    certs.write_bundle(d, ["localhost", "127.0.0.1"], ["client", "other"])
    return d


def _ns(**kw):
    base = dict(tls_cert=None, tls_key=None, tls_ca=None, insecure=False, token=None, tokens_file=None,
                tls_server_name=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_garbage_tls_files_are_named_as_such(tmp_path, bundle, capsys):
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cert, key, ca = str(bundle / "server.pem"), str(bundle / "server.key"), str(bundle / "ca.pem")
    for kw, field in [(dict(tls_cert=str(junk), tls_key=key), "tls_cert"),
                      (dict(tls_cert=cert, tls_key=str(junk)), "tls_key"),
                      (dict(tls_cert=cert, tls_key=str(bundle / "other.key")), "tls_key"),     # not its key
                      (dict(tls_cert=cert, tls_key=key, tls_ca=str(junk)), "tls_ca")]:
        with pytest.raises(ConfigError, match=f"^{field}:"):
            server_security(_ns(**kw))
    with pytest.raises(ConfigError, match="^tls_ca:"):
        client_security(_ns(tls_ca=str(junk)))
    with pytest.raises(ConfigError, match="^tls_key:"):
        client_security(_ns(tls_ca=ca, tls_cert=str(bundle / "client.pem"), tls_key=str(bundle / "other.key")))
    import grpc
    assert isinstance(server_security(_ns(tls_cert=cert, tls_key=key, tls_ca=ca)).credentials, grpc.ServerCredentials)
    err = _one_line_error(capsys, ["server", "--tls-cert", str(junk), "--tls-key", key, "--port", "0",
                                   "--out-dir", str(tmp_path / "runs")], "tls_cert")
    assert "port" not in err
