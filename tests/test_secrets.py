"""Secret detection rules (DECISIONS §12): names by their parts, values by their shape."""

import pytest

from nekzusd.secrets import is_secret, is_secret_name, is_secret_value, mask_env

PEM_RSA = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n-----END RSA PRIVATE KEY-----"
PEM_PKCS8 = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJmaXh0dXJlIiwiaWF0IjoxNzAwMDAwMDAwfQ"
       ".c2lnbmF0dXJlLWZvci10ZXN0cy1vbmx5")


@pytest.mark.parametrize("name", [
    "PASSWORD", "DB_PASSWORD", "MYSQL_ROOT_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD", "REDIS_PASSWD", "SMTP_PASS",
    "APP_SECRET", "SECRET", "GITHUB_TOKEN", "token", "db-password", "DB_CREDENTIALS", "GOOGLE_CREDENTIAL",
    "API_KEY", "STRIPE_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TLS_PRIVATE_KEY", "SECRET_KEY",
    "DJANGO_SECRET_KEY", "APIKEY", "dbPassword", "apiKey", "db.password", "ENCRYPTION_KEY", "SSH_PASSPHRASE",
])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    # §12's false positives: a substring is not a part.
    "AUTHOR", "PWD", "PATH", "KEYBOARD", "KEYBOARD_LAYOUT", "MONKEY",
    "PASSPORT_NUMBER", "BYPASS_CACHE", "PGPASSFILE", "TOKENIZER_MODEL", "SECRETARY_NAME", "COMPASS",
    # KEY alone is not enough: it needs API/ACCESS/PRIVATE/SECRET (or a like word) before it.
    "KEY", "SORT_KEY", "PUBLIC_KEY", "KEY_ID", "HOTKEY", "TURNKEY_MODE", "PATH_PREFIX", "HOME", "",
])
def test_not_secret_names(name):
    assert not is_secret_name(name)


@pytest.mark.parametrize("value", [
    PEM_RSA, PEM_PKCS8,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----",
    "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----",
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkq\n-----END ENCRYPTED PRIVATE KEY-----",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----",
    JWT,
    "Bearer " + JWT,
    "postgres://app:s3cr3t@db:5432/app",
    "ghp_" + "a" * 36,
    "AKIA" + "ABCDEFGHIJKLMNOP",
])
def test_secret_values(value):
    assert is_secret_value(value)


@pytest.mark.parametrize("value", [
    "", "alice", "/usr/local/bin:/usr/bin", "production", "eyJ", "eyJhbGciOi.not.a.jwt",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----",
    "https://example.org/path?q=1", "postgres://db:5432/app", "user@example.org", "a.b.c",
])
def test_not_secret_values(value):
    assert not is_secret_value(value)


def test_is_secret_combines_name_and_value():
    assert is_secret("DB_PASSWORD", "x")
    assert is_secret("SESSION_BLOB", JWT)
    assert is_secret("TLS_CERT_AND_KEY", PEM_PKCS8)
    assert not is_secret("AUTHOR", "alice")
    assert is_secret("DB_PASSWORD", "")
    assert not is_secret("GREETING", None)


def test_mask_env_masks_secret_values_only_and_keeps_order():
    env = ["PATH=/bin", "DB_PASSWORD=hunter2", "AUTHOR=alice", "SESSION=" + JWT, "NOVALUE", "EMPTY_TOKEN="]
    assert mask_env(env) == ["PATH=/bin", "DB_PASSWORD=***", "AUTHOR=alice", "SESSION=***", "NOVALUE",
                             "EMPTY_TOKEN=***"]
    assert mask_env(["API_KEY=abc"], mask="<hidden>") == ["API_KEY=<hidden>"]


def test_mask_env_keeps_value_with_equals_signs_whole():
    assert mask_env(["OPTS=a=b", "SECRET=a=b"]) == ["OPTS=a=b", "SECRET=***"]


def test_mask_env_none_and_empty():
    assert mask_env(None) is None
    assert mask_env([]) == []
