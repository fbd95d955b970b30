"""The benchmark's private CA and its two host certificates (ECDSA P-256),
made with `dctunnel certs` when the binary has it, else with openssl."""

import os
import subprocess
from pathlib import Path

from peers import CLIENT_NAME, SERVER_NAME

OTHER_NAME = "other.bench"


class Pki:
    def __init__(self, directory, dctunnel):
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.ca = d / "ca" / "ca.pem"
        self.server_cert = d / f"{SERVER_NAME}.pem"
        self.server_key = d / f"{SERVER_NAME}.key"
        self.client_cert = d / f"{CLIENT_NAME}.pem"
        self.client_key = d / f"{CLIENT_NAME}.key"
        # Same CA, a name no server end allows: must be refused.
        self.other_cert = d / f"{OTHER_NAME}.pem"
        self.other_key = d / f"{OTHER_NAME}.key"
        try:
            self._with_dctunnel(dctunnel)
            self.made_with = "dctunnel certs (init-ca, issue)"
        except (subprocess.CalledProcessError, OSError):
            self._with_openssl()
            self.made_with = "openssl (dctunnel certs unavailable)"
        self._check_p256()
        # haproxy wants certificate and key in one file.
        self.server_combined = d / f"{SERVER_NAME}.combined.pem"
        self.client_combined = d / f"{CLIENT_NAME}.combined.pem"
        for cert, key, combined in (
            (self.server_cert, self.server_key, self.server_combined),
            (self.client_cert, self.client_key, self.client_combined),
        ):
            fd = os.open(combined, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(cert.read_text() + key.read_text())

    def _with_dctunnel(self, dctunnel):
        run = lambda *a: subprocess.run(
            [str(dctunnel), "certs", *a], check=True, capture_output=True
        )
        run("init-ca", "--dir", str(self.ca.parent), "--name", "bench CA")
        for name in (SERVER_NAME, CLIENT_NAME, OTHER_NAME):
            run("issue", "--ca", str(self.ca.parent), "--name", name,
                "--ip", "127.0.0.1", "--out", str(self.dir))

    def _with_openssl(self):
        d = self.dir
        self.ca.parent.mkdir(exist_ok=True)
        ca_key = self.ca.parent / "ca.key"
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
        sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", str(ca_key))
        sh("openssl", "req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=bench CA",
           "-days", "30", "-out", str(self.ca),
           "-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        for name, cert, key in (
            (SERVER_NAME, self.server_cert, self.server_key),
            (CLIENT_NAME, self.client_cert, self.client_key),
            (OTHER_NAME, self.other_cert, self.other_key),
        ):
            sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
               "ec_paramgen_curve:P-256", "-out", str(key))
            os.chmod(key, 0o600)
            csr = d / f"{name}.csr"
            sh("openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={name}",
               "-out", str(csr))
            ext = d / f"{name}.ext"
            ext.write_text(
                f"subjectAltName=DNS:{name},IP:127.0.0.1\n"
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
            )
            sh("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca),
               "-CAkey", str(ca_key), "-CAcreateserial", "-days", "30",
               "-extfile", str(ext), "-out", str(cert))

    def _check_p256(self):
        for cert in (self.ca, self.server_cert, self.client_cert):
            text = subprocess.run(
                ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
                check=True, capture_output=True, text=True,
            ).stdout
            if "prime256v1" not in text and "P-256" not in text:
                raise RuntimeError(f"{cert} is not an ECDSA P-256 certificate")
