"""Test certificates for the TLS end-to-end tests, made with the `openssl`
command once per test run (in a temporary directory removed at exit).

    from certs import certs
    c = certs()
    c.ca                 # the private CA (PEM) that signs everything below
    c.server, c.server_key          # CN/SAN 127.0.0.1 + DNS:localhost
    c.server2, c.server2_key        # another valid one (for rotation), CN rotated.test
    c.chain, c.chain_key            # leaf signed by an intermediate CA: leaf then intermediate
    c.expired, c.expired_key        # valid 2020-01-01 .. 2020-01-02
    c.wrong_host, c.wrong_host_key  # CN/SAN wrong.example only
    c.client, c.client_key          # clientAuth, CN idem-test-client
    c.other_ca                      # a second CA nobody trusts
    c.untrusted, c.untrusted_key    # 127.0.0.1 + localhost, signed by other_ca
    c.garbage                       # a file that is not PEM at all

Keys are EC P-256 (fast to make) and mode 0600, because idemproxy refuses key
files that group or others can read. OpenSSL 3.0's CLI cannot back-date
`x509 -req`, so the expired certificate is issued with `openssl ca
-startdate/-enddate` from a minimal CA configuration.
"""

import atexit
import os
import shutil
import subprocess
import tempfile

_CERTS = None

CA_CNF = """\
[ ca ]
default_ca = testca
[ testca ]
database = {db}/index.txt
new_certs_dir = {db}
serial = {db}/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = copy
[ anything ]
commonName = supplied
"""


def _openssl(*args, cwd=None, timeout=20):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({p.returncode}):\n"
                           f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
    return p.stdout.decode(errors="replace")


class Certs:
    def __init__(self, directory=None):
        self.dir = directory or tempfile.mkdtemp(prefix="idem-certs-")
        self._serial = 0x1000
        self._make_all()

    def path(self, name):
        return os.path.join(self.dir, name)

    def _key(self, name):
        path = self.path(name + ".key")
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-out", path)
        os.chmod(path, 0o600)
        return path

    def _ca(self, name, cn, signer=None):
        """A CA certificate; self-signed, or signed by signer (name, a CA)."""
        key = self._key(name)
        pem = self.path(name + ".pem")
        if signer is None:
            _openssl("req", "-x509", "-new", "-key", key, "-out", pem, "-days", "3650",
                     "-subj", f"/CN={cn}",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-addext", "subjectKeyIdentifier=hash")
        else:
            csr = self.path(name + ".csr")
            _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
            ext = self.path(name + ".ext")
            with open(ext, "w") as f:
                f.write("basicConstraints=critical,CA:TRUE,pathlen:0\n"
                        "keyUsage=critical,keyCertSign,cRLSign\n"
                        "subjectKeyIdentifier=hash\n"
                        "authorityKeyIdentifier=keyid\n")
            self._sign(csr, pem, signer, ext)
        return pem, key

    def _sign(self, csr, pem, signer, ext, days="825"):
        self._serial += 1
        _openssl("x509", "-req", "-in", csr, "-CA", self.path(signer + ".pem"),
                 "-CAkey", self.path(signer + ".key"), "-set_serial", str(self._serial),
                 "-days", days, "-sha256", "-extfile", ext, "-out", pem)

    def _leaf(self, name, cn, sans, signer="ca", usage="serverAuth"):
        key = self._key(name)
        csr = self.path(name + ".csr")
        _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    f"extendedKeyUsage={usage}\n"
                    "authorityKeyIdentifier=keyid\n")
            if sans:
                f.write(f"subjectAltName={sans}\n")
        pem = self.path(name + ".pem")
        self._sign(csr, pem, signer, ext)
        return pem, key

    def _expired(self, name, cn, sans):
        """A server certificate valid only on 2020-01-01, issued by `openssl ca`."""
        key = self._key(name)
        csr = self.path(name + ".csr")
        _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}",
                 "-addext", f"subjectAltName={sans}",
                 "-addext", "extendedKeyUsage=serverAuth",
                 "-addext", "basicConstraints=critical,CA:FALSE")
        db = self.path("cadb")
        os.makedirs(db, exist_ok=True)
        with open(os.path.join(db, "index.txt"), "w"):
            pass
        with open(os.path.join(db, "serial"), "w") as f:
            f.write("2000\n")
        cnf = self.path("ca.cnf")
        with open(cnf, "w") as f:
            f.write(CA_CNF.format(db=db))
        pem = self.path(name + ".pem")
        _openssl("ca", "-batch", "-config", cnf, "-cert", self.ca, "-keyfile", self.ca_key,
                 "-in", csr, "-out", pem, "-notext",
                 "-startdate", "20200101000000Z", "-enddate", "20200102000000Z")
        return pem, key

    def _make_all(self):
        local = "IP:127.0.0.1,DNS:localhost"
        self.ca, self.ca_key = self._ca("ca", "idemproxy test CA")
        self.server, self.server_key = self._leaf("server", "127.0.0.1", local)
        self.server2, self.server2_key = self._leaf("server2", "rotated.test",
                                                    local + ",DNS:rotated.test")
        self.intermediate, self.intermediate_key = self._ca("intermediate",
                                                            "idemproxy test intermediate",
                                                            signer="ca")
        leaf, self.chain_key = self._leaf("chainleaf", "chained.test",
                                          local + ",DNS:chained.test", signer="intermediate")
        self.chain_leaf = leaf
        self.chain = self.path("chain.pem")
        with open(self.chain, "w") as out:
            for part in (leaf, self.intermediate):
                with open(part) as f:
                    out.write(f.read())
        self.expired, self.expired_key = self._expired("expired", "127.0.0.1", local)
        self.wrong_host, self.wrong_host_key = self._leaf("wronghost", "wrong.example",
                                                          "DNS:wrong.example")
        self.client, self.client_key = self._leaf("client", "idem-test-client", None,
                                                  usage="clientAuth")
        self.other_ca, self.other_ca_key = self._ca("otherca", "untrusted test CA")
        self.untrusted, self.untrusted_key = self._leaf("untrusted", "127.0.0.1", local,
                                                        signer="otherca")
        self.garbage = self.path("garbage.pem")
        with open(self.garbage, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nthis is not base64 at all!\n"
                    "-----END CERTIFICATE-----\n")

    def copy(self, src, dst, mode=None):
        """Copies a file (e.g. a key into a test's own directory); sets mode."""
        shutil.copyfile(src, dst)
        if mode is not None:
            os.chmod(dst, mode)
        return dst

    def cleanup(self):
        if os.environ.get("KEEP_TMP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


def certs():
    """The run's certificates, made on first use."""
    global _CERTS
    if _CERTS is None:
        if shutil.which("openssl") is None:
            raise RuntimeError("the openssl command is needed for the TLS tests")
        _CERTS = Certs()
        atexit.register(_CERTS.cleanup)
    return _CERTS


def fingerprint(pem_path):
    """SHA-256 fingerprint of a PEM certificate, as `openssl x509 -fingerprint` prints it."""
    out = _openssl("x509", "-in", pem_path, "-noout", "-fingerprint", "-sha256")
    return out.strip().split("=", 1)[1]


if __name__ == "__main__":
    c = Certs()
    print(c.dir)
