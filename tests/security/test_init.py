"""``mesh security init``: the files it writes, their modes, reruns and bad input."""

from __future__ import annotations

import ipaddress
import json
import stat
import subprocess
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh import catalogue
from mesh.cli import main
from mesh.security import CLIENTS, initialise
from nats_transport.testing import find_nats_server

IDENTITIES = [*catalogue.CATALOGUE, *CLIENTS]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted((folder / "secrets").rglob("*")) if p.is_file()}


def test_nats_server_accepts_the_standalone_config(data_dir):
    result = subprocess.run([find_nats_server(), "-t", "-c", str(data_dir / "nats-server.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    assert 'include "nats-security.conf"' in (data_dir / "nats-server.conf").read_text()


@pytest.mark.parametrize("identity", IDENTITIES)
def test_each_identity_folder_has_exactly_the_agreed_layout(data_dir, identity):
    folder = data_dir / "secrets" / identity
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "cert.pem", "identity.json", "key.pem", "nkey.seed"]
    record = json.loads((folder / "identity.json").read_text())
    seed = (folder / "nkey.seed").read_bytes().strip()
    assert record == {"name": identity, "nkey": nkeys.from_seed(seed).public_key.decode(),
                      "inbox_prefix": f"_INBOX_{identity}"}
    assert record["nkey"].startswith("U")
    cert = _cert(folder / "cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(_cert(data_dir / "secrets" / "ca" / "ca.pem"))
    assert (_mode(folder), _mode(folder / "key.pem"), _mode(folder / "nkey.seed")) == (0o700, 0o600, 0o600)


def test_the_server_certificate_names_loopback_and_the_given_hosts(data_dir):
    server = data_dir / "secrets" / "server"
    assert sorted(p.name for p in server.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    cert = _cert(server / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "nats"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH]
    ca = _cert(data_dir / "secrets" / "ca" / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3649
    assert _mode(data_dir / "secrets" / "ca" / "ca.key") == 0o600
    assert _mode(data_dir / "secrets" / "ca") == 0o700


def test_a_rerun_keeps_everything_and_force_regenerates_it(tmp_path):
    first = initialise(tmp_path, hosts=["nats"])
    before = _snapshot(tmp_path)
    again = initialise(tmp_path, hosts=["nats"])
    assert _snapshot(tmp_path) == before
    assert len(again) == len(first)
    assert all(line.startswith(("kept", "wrote")) for line in again)
    initialise(tmp_path, hosts=["nats"], force=True)
    after = _snapshot(tmp_path)
    assert all(after[name] != before[name] for name in before if not name.endswith(("identity.json",)))


def test_new_hosts_reissue_only_the_server_and_route_certificates(tmp_path):
    initialise(tmp_path)
    before = _snapshot(tmp_path)
    lines = initialise(tmp_path, hosts=["*.nats.default.svc.cluster.local", "10.1.2.3"])
    after = _snapshot(tmp_path)
    changed = {name for name in before if after[name] != before[name]}
    assert changed == {"secrets/server/cert.pem", "secrets/server/key.pem",
                       "secrets/routes/cert.pem", "secrets/routes/key.pem", "secrets/routes/ca.pem"}
    assert any(line.startswith("created server certificate") for line in lines)
    assert any(line.startswith("created route certificate") for line in lines)


def test_the_route_certificate_serves_both_ends_of_a_route_and_has_a_ca_of_its_own(tmp_path):
    initialise(tmp_path, hosts=["nats-0.nats"])
    routes = tmp_path / "secrets" / "routes"
    cert = x509.load_pem_x509_certificate((routes / "cert.pem").read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nats-0.nats" in names.get_values_for_type(x509.DNSName)
    assert (routes / "ca.pem").read_bytes() != (tmp_path / "secrets" / "ca" / "ca.pem").read_bytes()
    assert not (routes / "ca.key").exists()  # its key is gone: nothing else can be issued as a route


def test_a_lost_ca_reissues_certificates_but_keeps_the_nkeys(tmp_path):
    initialise(tmp_path)
    seed = (tmp_path / "secrets" / "auth" / "nkey.seed").read_bytes()
    for file in (tmp_path / "secrets" / "ca").iterdir():
        file.unlink()
    initialise(tmp_path)
    assert (tmp_path / "secrets" / "auth" / "nkey.seed").read_bytes() == seed
    _cert(tmp_path / "secrets" / "auth" / "cert.pem").verify_directly_issued_by(
        _cert(tmp_path / "secrets" / "ca" / "ca.pem"))


def test_the_cli_prints_one_line_per_file_group_and_exits_0(tmp_path, capsys):
    assert main(["security", "init", "--data-dir", str(tmp_path), "--host", "nats"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 + len(IDENTITIES) + 2  # CA, server, routes; identities; two configs


@pytest.mark.parametrize("argv", [
    ["--host", "not a host!"],
    ["--host", "-bad-.example"],
])
def test_a_bad_host_is_one_line_on_stderr_and_exit_2(tmp_path, capsys, argv):
    assert main(["security", "init", "--data-dir", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "--host" in err
    assert not (tmp_path / "d").exists()


def test_an_unwritable_data_dir_is_one_line_on_stderr_and_exit_2(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["security", "init", "--data-dir", str(tmp_path / "file" / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
