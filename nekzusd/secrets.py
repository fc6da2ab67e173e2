"""The one secret policy: what is a secret, and how it is masked or replaced before anything leaves.

Every path that emits container data goes through this module: the inspect view (`mask_inspect`), the
list and discovery rows, the status page (`mask_labels`, `scrub_text`), and the compose export (a
`SecretBook` whose replacements are `${NAME}` placeholders).

What is a secret:
- by NAME (of an environment variable, a label, a log-driver or volume/network driver option, or the key of
  a `key=value` pair inside any text): judged by its parts, never by substrings, so that AUTHOR, PWD, PATH,
  KEYBOARD_LAYOUT or MONKEY do not trigger. Parts are split on `_`, `-`, `.`, whitespace (newlines too, so
  no line of a name hides a part) and camelCase; each chunk between separators is judged whole too, so an
  odd mix of cases (`Db_PaSsWoRd`) hides nothing.
  - Secret alone: PASSWORD, PASSWD, PASS, PASSPHRASE, SECRET, TOKEN, CREDENTIAL(S), CREDS, BASICAUTH,
    DIGESTAUTH, HTPASSWD, PSK, SALT, PEPPER, MASTERAUTH, the joined APIKEY, AUTHKEY, SECRETKEY…, and a part
    that ends in PASSWORD/PASSWD, or in PASS unless it is a word such as BYPASS or COMPASS (PGPASSWORD,
    POSTGRESPASS).
  - Secret as the last part of a longer name: PWD (MYSQL_PWD), PW (VNC_PW), CLAIM (PLEX_CLAIM), COOKIE
    (ERLANG_COOKIE), PAT (GITHUB_PAT); AUTHORIZATION even alone (not AUTHORIZATION_MODE); AUTH after BASIC,
    DIGEST, NEO4J, ADMIN or ROOT (BASIC_AUTH, NEO4J_AUTH; not SMTP_AUTH=login, FORWARD_AUTH, swag_auth).
  - KEY or KEYS after a qualifier (API, ACCESS, PRIVATE, SECRET, APP, AUTH, SESSION, PRESHARED, SIGNING,
    ENCRYPTION, MASTER, CLIENT, LICENSE, WEBHOOK…), joined to it too (APPKEY, SESSIONKEY), or as the last
    part after any word but one that makes it an identifier or a public thing (STRIPE_KEY is secret;
    KEY_ID, PRIMARY_KEY, SORT_KEY, PUBLIC_KEY, GPG_KEY and RECAPTCHA_SITE_KEY stay readable) unless
    ENCRYPTION, SECRET, PRIVATE, SIGNING or MASTER stands earlier (ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY).
  - Never a name whose last part says what it holds is about a secret rather than one
    (`_NOT_SECRET_LAST`: PASSWORD_FILE, SSL_KEY_FILE, SECRETS_DIR, TOKEN_TTL, PASSWORD_MIN_LENGTH,
    TOKEN_URL, SECRET_NAME, BASIC_AUTH_USER, TOKEN_EXPIRE_MINUTES…), nor a value that is a switch
    (`MYSQL_ALLOW_EMPTY_PASSWORD=yes`, `MARIADB_RANDOM_ROOT_PASSWORD=1`, Traefik's `…Authorization=drop`),
    a variable, whole (`$X`, `${X:-y}`; `$3cr3t` and `$argon2id$…` are values), or a path of lower-case
    segments (`SSL_KEY=/certs/key.pem`).
  Driver options (lower-case, such as `splunk-token`, `syslog-tls-key`) are also secret when their last
  part is KEY.
- by SHAPE, whatever the name: a PEM private key, a JWT, the password of a `scheme://[user]:password@host`
  URL, the key of a `scheme://KEY@host` DSN (a user part of MIN_URL_KEY characters or more), the path of a
  Slack, Discord or Teams webhook, a Telegram bot's token, a Healthchecks.io ping URL, everything after
  the scheme of a notification URL (`gotify://`, `tgram://`, `discord://`, `pover://`… as Watchtower,
  Diun and Apprise take them), a well-known token prefix (`_TOKEN_SHAPES`: ghp_, github_pat_, glpat-,
  xoxb-, sk_live_, sk-…, tskey-, AKIA…, dckr_pat_, hvs., a Cloudflare tunnel token), the value of a
  `name=value` (quoted or bare: `--password="pw"`, `password = pw`; `NAME= cmd` is an empty value),
  `"name": "value"`, `name:value` (not a shell default `${NAME:-x}`), `{"name": NAME, "value": …}`,
  `['name'] = 'value'` or YAML `name: value` line (in text of several lines) pair whose name is secret
  (`--db-password=…`, `o: username=u,password=p`, `Password:pw;`, an env entry of a Kubernetes manifest,
  GitLab's and Synapse's config in an env value), the `auth` of a Docker `config.json`, and the
  credential of an `Authorization:` or dashed header (`Bearer …`, `Basic …`, `X-Api-Key: k`).
- by POSITION in a command line (a list of arguments, or a string split on whitespace; Docker's Path and
  Args, Entrypoint and Cmd, a pod's command and args, a service's entrypoint and command each read as one
  line): the argument after an option whose last part is a secret word (`--requirepass X`,
  `--db-password X`; not after `--password-file`, `--token-ttl`, `--no-password` or `--askpass`), and the
  passwords programs take by options of their own (`_PROGRAM_OPTIONS`: `mysql -pX`, `redis-cli -a X`,
  `curl -u user:X`, `sshpass -p X`, `docker login -p X`, `sqlcmd -P X`, `ldapsearch -w X`, …). A value
  that is a variable (`-p"$MYSQL_ROOT_PASSWORD"`) is left as it is. A program's own options end with its
  command (`&&`, `|`, `;`, a newline, `$(`, glued to a word or not; for `sshpass`, the program it runs):
  `docker login -p X && docker run -p 8080:80` masks X only, and `-a X|grep PONG` keeps `|grep`. A program
  is found after `VAR=` too (`BACKUP_CMD=mysqldump -pX`), and an exported command is read after the image's
  entrypoint when that is not written. Quotes are not parsed: a password with spaces is masked up to its
  first.
Where a secret repeats: once found (in the environment, a secret-named label or option, by shape or by
position), its value is hunted in every other string of the same document, except identity fields (ids,
names, image references, host names, network settings), so that a password equal to "postgres" does not
turn the image "postgres:16" into a mask. A value of letters only is hunted only as a word of its own
(between spaces or quotes), and not where an ordinary field holds it whole (`POSTGRES_USER=postgres`, a
label `homepage.name: paperless`), so that `POSTGRES_PASSWORD=postgres` leaves `/var/lib/postgresql/data`
and the `postgres` command alone. At
most MAX_HUNTED values of at most MAX_HUNTED_LENGTH characters are hunted (longer secrets, PEM keys and
JWTs, are found by shape). Values shorter than MIN_REPEATED_SECRET (6)
characters are not hunted: a secret "1" would otherwise mangle every number. They are still masked where
a name, shape or position says so. A value's core is hunted too (`base64:KEY=` is often repeated as the
bare KEY).
Dict keys are never rewritten (they are names); a secret used as a key is not hidden.
The work is linear in the text, whatever it holds: a 100 KB label of `a=a=…`, `a.a.…`, `sk-sk-…` or
`eyJ-eyJ-…` on an image must not stall the container list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

__all__ = ["MASK", "MIN_REPEATED_SECRET", "Spans", "argv_spans", "command_spans", "is_secret_name",
           "is_secret_option", "is_secret_value", "is_secret", "find_secrets", "mask_env", "secret_env_values",
           "SecretBook", "secret_values_of", "mask_inspect", "mask_details", "mask_labels", "scrub_text",
           "IDENTITY_KEYS"]

MASK = "***"
# Secret values shorter than this are not hunted in other fields: they would match innocent text.
MIN_REPEATED_SECRET = 6

# A name part that alone makes the variable secret.
_SECRET_PARTS = frozenset({
    "PASSWORD", "PASSWORDS", "PASSWD", "PASS", "PASSPHRASE", "SECRET", "SECRETS", "TOKEN", "TOKENS",
    "CREDENTIAL", "CREDENTIALS", "CREDS", "BASICAUTH", "DIGESTAUTH", "HTPASSWD", "PSK", "SALT", "PEPPER",
    "MASTERAUTH",
    # The same words written without a separator ("APIKEY", "TS_AUTHKEY") are common enough to name.
    "APIKEY", "APIKEYS", "ACCESSKEY", "ACCESSKEYS", "SECRETKEY", "SECRETKEYS", "PRIVATEKEY", "AUTHKEY",
    "AUTHKEYS", "AUTHTOKEN", "ACCESSTOKEN",
})
# A part ending in one of these is secret too (PGPASSWORD, ROOTPASSWORD, POSTGRESPASS), unless it is one of
# the words that merely end so.
_SECRET_SUFFIXES = ("PASSWORD", "PASSWD", "PASS")
_NOT_SECRET_WORDS = frozenset({"BYPASS", "COMPASS", "ENCOMPASS", "SURPASS", "TRESPASS", "OVERPASS",
                               "UNDERPASS", "MULTIPASS", "ONEPASS", "TWOPASS", "SINGLEPASS", "FIRSTPASS",
                               "ASKPASS"})
# Secret only as the last part of a longer name: PWD (MYSQL_PWD; alone it is the shell's working directory,
# and OLDPWD is one part that is not PWD), PW (VNC_PW), CLAIM (PLEX_CLAIM; CLAIM_NAME is a volume claim),
# COOKIE (ERLANG_COOKIE), PAT (GITHUB_PAT).
_LAST_ONLY_PARTS = frozenset({"PWD", "PW", "CLAIM", "COOKIE", "PAT"})
# Secret as the last part, alone too: an Authorization header's value (HTTP_AUTHORIZATION), not a mode
# (AUTHORIZATION_MODE).
_LAST_PARTS = frozenset({"AUTHORIZATION"})
# AUTH is secret after these (BASIC_AUTH: `user:password`, NEO4J_AUTH: `neo4j/password`); alone, or after
# a verb or a proxy (SMTP_AUTH=login, DISABLE_AUTH, FORWARD_AUTH, swag_auth=authelia), it is a setting.
_AUTH_QUALIFIERS = frozenset({"BASIC", "DIGEST", "BEARER", "NEO4J", "ADMIN", "ROOT"})
# A name whose last part says what it holds is about a secret, not one: PASSWORD_FILE (a path),
# TOKEN_TTL, PASSWORD_MIN_LENGTH, SHOW_PASSWORD_HINT, SECRETS_DIR, TOKEN_URL, SECRET_NAME.
_NOT_SECRET_LAST = frozenset({
    "FILE", "FILES", "PATH", "DIR", "DIRECTORY", "URL", "URI", "ENDPOINT", "TTL", "EXPIRY", "EXPIRES",
    "EXPIRATION", "LIFETIME", "TIMEOUT", "LENGTH", "HINT", "ITERATIONS", "ROUNDS", "POLICY", "MODE", "TYPE",
    "NAME", "ENABLED", "DISABLED", "REQUIRED", "LOGIN", "RESET", "PROMPT", "STDIN", "EXPIRE", "SIZE",
    "SECONDS", "MINUTES", "HOURS", "DAYS", "LEN", "MIN", "MAX", "ALGO", "ALGORITHM", "HEADER", "PREFIX", "USER",
    "USERNAME", "IN", "ENCRYPTION", "METHOD", "SCHEME", "STRENGTH", "COMPLEXITY", "AUDIENCE", "ISSUER", "TIME",
})
# KEY (or KEYS) after one of these is secret wherever it stands (API_KEY, APP_KEY, WG_PRESHARED_KEY,
# AWS_ACCESS_KEY_ID); alone it is not, nor first (KEY_ID).
_KEY_QUALIFIERS = frozenset({
    "API", "ACCESS", "PRIVATE", "SECRET", "ENCRYPTION", "SIGNING", "MASTER", "SSH", "HMAC", "JWT",
    "APP", "AUTH", "SESSION", "PRESHARED", "SHARED", "CLIENT", "LICENSE", "WEBHOOK", "COOKIE", "CSRF",
})
_KEY_PARTS = frozenset({"KEY", "KEYS"})
# KEY as the last part is secret after any other word (STRIPE_KEY, MAPBOX_KEY) but these, which make it an
# identifier, a lookup, or a public thing.
_PLAIN_KEY_QUALIFIERS = frozenset({
    "PUBLIC", "PRIMARY", "FOREIGN", "SORT", "PARTITION", "ROUTING", "SHARD", "CACHE", "LOOKUP", "HASH",
    "GPG", "PGP", "UNIQUE", "INDEX", "GROUP", "OBJECT", "BUCKET", "HOT", "MAP", "TYPE", "SIZE", "LENGTH",
    "BITS", "ALGORITHM", "ALG", "FORMAT", "USAGE", "ROTATION", "ID", "SITE", "KEYBOARD", "LANGUAGE",
})
# KEY last after a plain word is secret still when one of these stands earlier in the name
# (ACTIVE_RECORD_ENCRYPTION_PRIMARY_KEY).
_STRONG_KEY_QUALIFIERS = frozenset({"ENCRYPTION", "SECRET", "PRIVATE", "SIGNING", "MASTER"})
_JOINED_KEYS = tuple(q + k for q in _KEY_QUALIFIERS for k in ("KEY", "KEYS"))

# Splits on camelCase boundaries inside a chunk, so that "dbPassword" is judged too.
_PART_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_OPTION_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")

_PEM_PRIVATE_RE = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# A JWT is read as a header run (consumed whole, so that `eyJ-eyJ-…` is not rescanned from each start),
# then its payload and signature where the run ends.
_JWT_HEADER_RE = re.compile(r"\beyJ[A-Za-z0-9_-]*")
_JWT_REST_RE = re.compile(r"\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
# scheme://[user]:password@host — a database URL carries its password (group 1); the user may be empty
# (`redis://:pw@redis`).
# A scheme is short: bounded, so that a long run of `a.a.a.` is not rescanned from each word boundary.
_SCHEME = r"\b[a-zA-Z][a-zA-Z0-9+.-]{0,31}://"
_URL_CREDENTIALS_RE = re.compile(_SCHEME + r"[^/\s:@]*:([^/\s@]+)@")
# scheme://key@host with no password: a Sentry DSN's user part is its key. Only a long user part counts
# (MIN_URL_KEY), so that `ssh://git@host` or `postgres://postgres@db` keep their login names.
MIN_URL_KEY = 16
_URL_KEY_RE = re.compile(_SCHEME + r"([^/\s:@]{" + str(MIN_URL_KEY) + r",})@")
# Well-known token shapes: (prefix, rest). The prefixes alone are a cheap test before the whole regex runs
# on every label of the list. Keys of random characters carry digits and capitals,
# which the `sk-` pattern asks for so that a name such as `sk-learn-docker-image` is not taken.
_TOKEN_SHAPES: tuple[tuple[str, str], ...] = (
    (r"gh[pousr]_", r"[A-Za-z0-9]{20,}"),                        # GitHub
    (r"github_pat_", r"[A-Za-z0-9_]{20,}"),                      # GitHub fine-grained
    (r"gl(?:pat|rt|dt|ptt)-", r"[A-Za-z0-9_-]{20,}"),            # GitLab
    (r"xox[abposre]-", r"[A-Za-z0-9-]{10,}"),                    # Slack bot/user/app-level
    (r"xapp-", r"[A-Za-z0-9-]{10,}"),                            # Slack app token
    (r"[sr]k_(?:live|test)_", r"[A-Za-z0-9]{16,}"),              # Stripe secret / restricted
    (r"sk-", r"(?=[A-Za-z0-9_-]{0,200}[0-9])(?=[A-Za-z0-9_-]{0,200}[A-Z])[A-Za-z0-9_-]{20,}"),  # OpenAI, Anthropic
    (r"tskey-", r"[A-Za-z0-9-]{10,}"),                           # Tailscale auth/API keys
    (r"A[KS]IA", r"[0-9A-Z]{16}"),                               # AWS access key ids
    (r"AIza", r"[0-9A-Za-z_-]{35}"),                             # Google API key
    (r"npm_", r"[A-Za-z0-9]{36}"),                               # npm
    (r"pypi-AgE", r"[A-Za-z0-9_-]{50,}"),                        # PyPI
    (r"hf_", r"[A-Za-z0-9]{30,}"),                               # Hugging Face
    (r"SG\.", r"[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}"),        # SendGrid
    (r"dop_v1_", r"[a-f0-9]{64}"),                               # DigitalOcean
    (r"dckr_pat_", r"[A-Za-z0-9_-]{20,}"),                       # Docker Hub
    (r"glsa_", r"[A-Za-z0-9_]{32,}"),                            # Grafana service account
    (r"hvs\.", r"[A-Za-z0-9_-]{24,}"),                           # Vault
    (r"AGE-SECRET-KEY-1", r"[0-9A-Z]{50,}"),                     # age / sops
    (r"whsec_", r"[A-Za-z0-9+/=]{24,}"),                         # webhook signing secrets
    (r"gsk_", r"[A-Za-z0-9]{40,}"),                              # Groq
    (r"shpat_", r"[a-fA-F0-9]{32}"),                             # Shopify
    (r"lin_api_", r"[A-Za-z0-9]{30,}"),                          # Linear
    (r"eyJhIjoi", r"[A-Za-z0-9+/]{40,}"),                        # Cloudflare tunnel token (base64 JSON)
)
_TOKEN_PREFIX_RE = re.compile(r"\b(?:" + "|".join(h + p for h, p in _TOKEN_SHAPES) + r")\b")
_TOKEN_HINT_RE = re.compile("|".join(h for h, _p in _TOKEN_SHAPES))
# Webhook URLs whose path is the credential (group 1): Slack, Discord.
_WEBHOOK_RE = re.compile(r"https?://(?:hooks\.slack\.com/(?:services|workflows|triggers)/"
                         r"|(?:[a-z]+\.)?discord(?:app)?\.com/api/webhooks/"
                         r"|[a-z0-9-]+\.webhook\.office\.com/webhookb2/"    # Microsoft Teams
                         r"|api\.telegram\.org/bot"                         # a Telegram bot's token
                         r"|hc-ping\.com/"                                  # Healthchecks.io
                         r"|[A-Za-z0-9.-]+(?::[0-9]+)?/api/push/)([A-Za-z0-9_/:@-]{8,})")  # Uptime Kuma push
# Notification URLs (Shoutrrr, Apprise: Watchtower, Diun, …) carry their tokens anywhere after the scheme:
# everything after it is the secret (group 1).
_NOTIFY_URL_RE = re.compile(r"\b(?:gotifys?|tgram|telegram|discord|pover|pushover|pbul|pushbullet|slack|teams|"
                            r"mmosts?|mattermost|matrixs?|rocketchat|rockets?|zulip|opsgenie|pagerduty|"
                            r"googlechat|gchat|ifttt|join|bark|ntfys?|signal|pushed|lametric|msteams|mailgun|"
                            r"pushsafer|sendgrid|twilio|spush|pjet|prowl|simplepush|apprises?)://([^\s'\"]+)")
# name=value inside any text: command-line flags, mount options, URL queries, env-like strings, `name = value`.
# Only the name and `=` are matched (the value is read by _value_end), so that pairs may overlap: in
# `EVIL=1_PASSWORD=pw` (an env name with a newline, then a value that is itself a pair) both `EVIL=…` and
# `1_PASSWORD=pw` are judged, and no value is read twice. The name may start with a digit.
# `name = value` has spaces on both sides; `NAME= psql …` is an empty value before a command.
_ASSIGNMENT_RE = re.compile(r"(?<![A-Za-z0-9_.-])-{0,2}([A-Za-z0-9_][A-Za-z0-9_.-]*)(?:=|[ \t]+=[ \t]*)")
_BARE_VALUE_RE = re.compile(r"[^\s,;&'\"]+")
_SCHEME_CREDENTIAL_RE = re.compile(r"[ \t]+([^\s,;&'\"]+)")
MAX_QUOTED_VALUE = 4096  # a quoted value ends within this many characters, or is read as a bare one
# name: value in JSON (`"password": "pw"`), and name:value glued (`Password:pw;` in a connection string).
_JSON_PAIR_RE = re.compile(r'"([A-Za-z0-9_][A-Za-z0-9_.-]*)"\s*:\s*"((?:[^"\\\n]|\\.)+)"')
# An environment entry of a Kubernetes manifest in JSON (`last-applied-configuration`, any container kind):
# {"name": "DB_PASSWORD", "value": "pw"}.
# Docker's config.json (`DOCKER_AUTH_CONFIG`): {"auths": {"reg": {"auth": "base64(user:password)"}}}.
_JSON_AUTH_RE = re.compile(r'"((?i:auth|identitytoken|registrytoken))"\s*:\s*"([A-Za-z0-9+/=_-]{8,})"')
# Config inside an env value: Ruby (`gitlab_rails['initial_root_password'] = 'pw'`), and YAML lines
# (`password: pw`; only in text of several lines: a single `word: text` is how messages read).
_RUBY_PAIR_RE = re.compile(r"""\[['"]([A-Za-z0-9_.-]{1,128})['"]\][ \t]*=[ \t]*['"]([^'"\n]+)['"]""")
_YAML_PAIR_RE = re.compile(r"^[ \t]*-?[ \t]*([A-Za-z_][A-Za-z0-9_.-]*):[ \t]+['\"]?([^\s'\"#]+)", re.M)
_JSON_ENV_RE = re.compile(r'"name"\s*:\s*"([^"\\\n]{1,256})"\s*,\s*"value"\s*:\s*"((?:[^"\\\n]|\\.)+)"')
# Not `${NAME:-default}`, a shell default (nor `:?`, `:=`, `:+`).
_COLON_PAIR_RE = re.compile(r"(?<![A-Za-z0-9_.:/@{-])([A-Za-z_][A-Za-z0-9_.-]*):(?![/:?=+-])([^\s,;&'\"@]+)")
# The scheme words of an Authorization value: the credential is the word after one.
_AUTH_SCHEMES = ("bearer", "basic", "digest", "token", "bot", "apikey", "key", "sso-key", "mediabrowser", "emby",
                 "splunk", "negotiate", "hmac", "googlelogin")
# An HTTP header (`Authorization: Bearer x`, `X-Api-Key: k`: a dashed name, or Authorization; not any
# `word: text`, which is how messages read): the value after the scheme word, if any.
_HEADER_RE = re.compile(r"(?<![A-Za-z0-9_.-])((?:[A-Za-z0-9]+-)*(?i:authorization)|[A-Za-z][A-Za-z0-9]*"
                        r"(?:-[A-Za-z0-9]+)+):[ \t]*"
                        r"(?:(?i:" + "|".join(_AUTH_SCHEMES) + r")[ \t]+)?([^\s,;'\"]+)")
# A secret's core, hunted on its own too: Laravel's `base64:KEY=` is often repeated as the bare KEY.
_CORE_RE = re.compile(r"^(?:base64|hex|b64):(.+?)=*$")


_SEPARATORS_RE = re.compile(r"[_\-.\s]+")


def _name_parts(name: str) -> list[str]:
    return [p.upper() for chunk in _SEPARATORS_RE.split(name) for p in _PART_RE.findall(chunk)]


def _chunks(name: str) -> list[str]:
    return [chunk.upper() for chunk in _SEPARATORS_RE.split(name) if chunk]


# Names repeat (label keys, env names of every container): the verdicts are cached, bounded.
@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """True when a part of the name (split on _ - . and camelCase) marks it as holding a secret; the
    chunks between separators are judged whole too (`Db_PaSsWoRd` splits on its case into nonsense)."""
    # Every line of a name counts on its own too: an env name with a newline (`NAME\nEVIL`) is split
    # there like on any other whitespace, so no line hides a part.
    parts = _name_parts(name)
    if parts and (parts[-1] in _NOT_SECRET_LAST or parts[-1].endswith(("FILE", "PATH", "DIR"))):
        return False
    return _secret_parts(parts) or _secret_parts(_chunks(name))


def _secret_parts(parts: list[str], last_only: bool = False) -> bool:
    """The rules over a name's parts; ``last_only``: only the last part may make it secret."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if last_only and i != last:
            continue
        before = parts[i - 1] if i > 0 else ""
        if part in _SECRET_PARTS or (part.endswith(_SECRET_SUFFIXES) and part not in _NOT_SECRET_WORDS):
            return True
        if part.endswith(_JOINED_KEYS):
            return True
        if part in _KEY_PARTS and before and (before in _KEY_QUALIFIERS or (i == last and (
                before not in _PLAIN_KEY_QUALIFIERS or not _STRONG_KEY_QUALIFIERS.isdisjoint(parts[:i])))):
            return True
        if i == last and (part in _LAST_PARTS or (part in _LAST_ONLY_PARTS and before)):
            return True
        if part == "AUTH" and before in _AUTH_QUALIFIERS:
            return True
    return False


@lru_cache(maxsize=4096)
def is_secret_option(name: str) -> bool:
    """A driver option (log driver, volume or network driver): secret by name, or a lower-case option
    whose last part is KEY (`syslog-tls-key`, `fluentd-key`): options name their key material so."""
    if is_secret_name(name):
        return True
    parts = _name_parts(name)
    return (bool(_OPTION_NAME_RE.fullmatch(name)) and len(parts) > 1 and parts[-1] == "KEY"
            and parts[-2] not in _PLAIN_KEY_QUALIFIERS)


def is_secret_value(value: str) -> bool:
    """True when the value looks like a secret whatever its name: private key, JWT, URL password, API token."""
    if not value:
        return False
    return ("-----BEGIN" in value and bool(_PEM_PRIVATE_RE.search(value))) or (
        "eyJ" in value and bool(_jwt_spans(value))) or (
        "://" in value and any(rx.search(value) for rx in (_URL_CREDENTIALS_RE, _URL_KEY_RE, _WEBHOOK_RE,
                                                           _NOTIFY_URL_RE))) or (
        bool(_TOKEN_HINT_RE.search(value)) and bool(_TOKEN_PREFIX_RE.search(value)))


def is_secret(name: str, value: str) -> bool:
    """True when either the name or the value says the variable holds a secret (a switch such as
    `MYSQL_ALLOW_EMPTY_PASSWORD=yes` holds none, nor a path; an empty value is masked too, so that a
    reader does not learn which passwords are unset)."""
    return (is_secret_name(name) and (not value or _is_value(value))) or is_secret_value(value or "")


def find_secrets(text: str) -> list[tuple[int, int, str]]:
    """Spans (start, end, suggested name) of the secrets that the text's own shape reveals."""
    found: list[tuple[int, int, str]] = []
    # Cheap substring tests first: most strings (labels on the hot list path) hold none of these shapes.
    if "-----BEGIN" in text:
        found += _pem_spans(text)
    if "eyJ" in text:
        found += _jwt_spans(text)
    if "://" in text:
        if "@" in text:
            found += [(m.start(1), m.end(1), "URL_PASSWORD") for m in _URL_CREDENTIALS_RE.finditer(text)]
            found += [(m.start(1), m.end(1), "URL_KEY") for m in _URL_KEY_RE.finditer(text)]
        found += [(m.start(1), m.end(1), "WEBHOOK") for m in _WEBHOOK_RE.finditer(text)]
        found += [(m.start(1), m.end(1), "NOTIFY_URL") for m in _NOTIFY_URL_RE.finditer(text)]
    if _TOKEN_HINT_RE.search(text):
        found += [(m.start(), m.end(), "TOKEN") for m in _TOKEN_PREFIX_RE.finditer(text)]
    if "=" in text:
        found += _assignment_spans(text)
    if ":" in text:
        if '"' in text:
            found += _pair_spans(_JSON_PAIR_RE, text)
            if '"value"' in text:
                found += _pair_spans(_JSON_ENV_RE, text)
            found += [(m.start(2), m.end(2), "REGISTRY_AUTH") for m in _JSON_AUTH_RE.finditer(text)]
        if "\n" in text:
            found += _pair_spans(_YAML_PAIR_RE, text)
        found += _pair_spans(_COLON_PAIR_RE, text)
        found += _pair_spans(_HEADER_RE, text)
    if "['" in text or '["' in text:
        found += _pair_spans(_RUBY_PAIR_RE, text)
    if "-" in text and any(c in text for c in " \t\n;|&"):
        found += _command_spans(text)
    return found


def _pair_spans(regex: re.Pattern[str], text: str) -> list[tuple[int, int, str]]:
    found = []
    for m in regex.finditer(text):
        if is_secret_name(m.group(1)) and _is_value(m.group(2)):
            found.append((m.start(2), m.end(2), m.group(1)))
    return found


# Values a secret-named field may hold that are no secret: a switch, a reference to a variable, a mask.
_SWITCH_VALUES = frozenset({"true", "false", "yes", "no", "y", "n", "on", "off", "0", "1", "none", "null",
                            "enabled", "disabled", "drop", "keep", "redact"})
# A path of lower-case segments (`/run/secrets/db`, `/certs/key.pem`) names a file: no secret (a random
# password has capitals, and rarely two slashes).
_PATH_VALUE_RE = re.compile(r"(?:\.{0,2}/[a-z0-9_.@-]+){2,}/?|~/[a-z0-9_.@/-]+")


# A reference to a variable, whole (`$PW`, `${PW:-x}`, `$(cat /run/secrets/pw)`): `$3cr3t` or an argon2
# hash (`$argon2id$v=19$…`) is a value.
_VARIABLE_RE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[^}]*\}|\([^)]*\))")


def _is_value(value: str) -> bool:
    """A value a secret-named field may hold that is a secret: not a switch, a variable, a mask or a path."""
    if not value or value == MASK:
        return False
    if len(value) > 64:  # no switch, variable or path of ours is this long: a secret
        return True
    return (value.lower() not in _SWITCH_VALUES and not _VARIABLE_RE.fullmatch(value)
            and not _PATH_VALUE_RE.fullmatch(value))


def _assignment_spans(text: str) -> list[tuple[int, int, str]]:
    found: Spans = []
    run_end = -1  # where the bare value last read ends: a name inside it shares that end
    for m in _ASSIGNMENT_RE.finditer(text):
        start = m.end()
        if found and found[-1][0] <= start < found[-1][1]:
            continue  # inside a value already found (`token=token=…`): masked with it
        if start >= len(text) or text[start] == "=" or not is_secret_name(m.group(1)):
            continue
        quote = text[start]
        if quote in "'\"":
            end = text.find(quote, start + 1, start + 1 + MAX_QUOTED_VALUE)
            if end > start + 1 and "\n" not in text[start + 1:end]:
                if _is_value(text[start + 1:end]):
                    found.append((start + 1, end, m.group(1)))
                continue
        if start >= run_end:
            bare = _BARE_VALUE_RE.match(text, start)
            run_end = bare.end() if bare else start
            if text[start:run_end].lower() in _AUTH_SCHEMES:  # AUTHORIZATION=Bearer x: the word after it
                credential = _SCHEME_CREDENTIAL_RE.match(text, run_end)
                if credential is not None:
                    start, run_end = credential.start(1), credential.end(1)
        if run_end > start and _is_value(text[start:run_end]):
            found.append((start, run_end, m.group(1)))
    return found


# Command lines. An option whose name ends in a secret word takes the next argument as its value
# (`--requirepass X`, `--db-password X`), but not one whose name goes on (`--password-file`, `--token-ttl`,
# `--secret-name`) nor a switch (`--no-password`, `--askpass`, `--ask-vault-pass`).
_OPTION_RE = re.compile(r"-{1,2}([A-Za-z][A-Za-z0-9_.-]*)")
# `VAR=--option` or `VAR=program` (an environment value that is a command line: `REDIS_ARGS=--requirepass X`,
# `BACKUP_CMD=mysqldump -pX`).
_ASSIGNED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_MYSQL = ("mysql", "mysqladmin", "mysqldump", "mysqlcheck", "mysqlimport", "mysqlshow", "mysqlslap",
          "mariadb", "mariadb-admin", "mariadb-dump", "mariadb-check", "mariadb-import", "mariadb-show")
# Programs that take a password by an option of their own: program -> option -> (how, hint). How: "next"
# (the next argument), "glued" (`-pPASS`; mysql's `-p X` prompts and X is a database), "both", or "user"
# (`user:password` or `user%password`, next or glued: only the password). A short option also counts at the
# end of a bundle (`curl -sfu user:pw`).
_PROGRAM_OPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    **{p: {"-p": ("glued", "MYSQL_PASSWORD")} for p in _MYSQL},
    **{p: {"-a": ("next", "REDIS_PASSWORD")} for p in ("redis-cli", "valkey-cli", "keydb-cli")},
    **{p: {"-p": ("both", "MONGO_PASSWORD")} for p in ("mongo", "mongosh", "mongodump", "mongorestore")},
    **{p: {"-P": ("next", "MQTT_PASSWORD")} for p in ("mosquitto_pub", "mosquitto_sub", "mosquitto_rr")},
    **{p: {"-w": ("both", "LDAP_PASSWORD")} for p in ("ldapsearch", "ldapadd", "ldapmodify", "ldapdelete",
                                                      "ldapwhoami", "ldappasswd")},
    "sshpass": {"-p": ("both", "SSH_PASSWORD")},
    "docker login": {"-p": ("next", "REGISTRY_PASSWORD")},
    "sqlcmd": {"-P": ("next", "MSSQL_PASSWORD")},
    "cqlsh": {"-p": ("next", "CASSANDRA_PASSWORD")},
    "unzip": {"-P": ("next", "ZIP_PASSWORD")},
    "7z": {"-p": ("glued", "ZIP_PASSWORD")},
    "smbclient": {"-U": ("user", "SMB_PASSWORD"), "--user": ("user", "SMB_PASSWORD")},
    "lftp": {"-u": ("user", "FTP_PASSWORD")},
    "curl": {"-u": ("user", "HTTP_PASSWORD"), "--user": ("user", "HTTP_PASSWORD"),
             "-U": ("user", "PROXY_PASSWORD"), "--proxy-user": ("user", "PROXY_PASSWORD")},
}
_QUOTES = "'\"`("
# Where a program's own options end: a shell separator, or (for a program that runs another) its first
# word that is not an option.
_SEPARATORS = frozenset({"&&", "||", "|", ";", "&", "\n", "then", "do", "else", "$(", "`"})
_WRAPPERS = frozenset({"sshpass"})
_USER_SEPARATORS = re.compile(r"[:%,]")
_BUNDLE_RE = re.compile(r"-[A-Za-z]{2,}")  # short options bundled: -sfu
Spans = list[tuple[int, int, str]]


@lru_cache(maxsize=4096)
def _takes_secret(name: str) -> bool:
    """The option's last part is a secret word (and it is no `--no-…` or `--ask-…` switch): its next
    argument is the secret."""
    parts = _name_parts(name)
    return bool(parts) and parts[0] not in ("NO", "ASK") and (_secret_parts(parts, last_only=True) or
                                                               _secret_parts(_chunks(name), last_only=True))


_MAY_BE_OPTION_RE = re.compile(r"(?:^|=)['\"`(]*-")


def _may_be_option(arg: str) -> bool:
    """An argument that may be an option, or a `VAR=-option` (quoted or not)."""
    return "-" in arg and _MAY_BE_OPTION_RE.search(arg) is not None


class _CommandLine:
    """Reads a command line one argument at a time: which program's options apply, and whether the
    argument before was an option waiting for its value."""

    def __init__(self) -> None:
        self.options: dict[str, tuple[str, str]] = {}
        self.pending: tuple[str, str] | None = None  # (how, hint) of the option just seen
        self.wrapper = False
        self.previous = ""

    def end_command(self) -> None:
        self.options, self.pending, self.wrapper = {}, None, False

    def read(self, raw: str) -> Spans:
        """The spans of the secrets in one argument."""
        token = raw.lstrip(_QUOTES)
        while token.startswith("$("):  # `$(redis-cli -a X ping)`
            token = token[2:].lstrip(_QUOTES)
        assigned = _ASSIGNED_RE.match(token)
        if assigned and self.pending is None:
            rest = token[assigned.end():].lstrip(_QUOTES)
            if rest.startswith("-") or rest.rsplit("/", 1)[-1] in _PROGRAM_OPTIONS:
                token = rest
        lead = len(raw) - len(token)
        token = token.rstrip(_QUOTES + ")];")
        previous, self.previous = self.previous, token
        if self.pending is not None:
            how, hint = self.pending
            self.pending = None
            if token and not _OPTION_RE.fullmatch(token):
                return _value_span(token, lead, how, hint)
        program = token.rsplit("/", 1)[-1]
        if program in _PROGRAM_OPTIONS:
            self.options, self.wrapper = _PROGRAM_OPTIONS[program], program in _WRAPPERS
            return []
        if token == "login" and previous in ("docker", "podman"):
            self.options = _PROGRAM_OPTIONS["docker login"]
            return []
        if not token.startswith("-"):
            if self.wrapper:  # sshpass -p X ssh -p 2222: ssh's options are its own
                self.options, self.wrapper = {}, False
            return []
        flag, equals, value = token.partition("=")
        own = self.options.get(flag) or self.options.get(f"-{flag[-1]}" if _BUNDLE_RE.fullmatch(flag) else "")
        if own is not None:
            if equals:  # --user=admin:pw
                return _value_span(value, lead + len(flag) + 1, *own)
            if own[0] != "glued":
                self.pending = own
            return []
        for flag, (how, hint) in self.options.items():
            if how != "next" and len(flag) == 2 and token.startswith(flag) and len(token) > 2:
                return _value_span(token[2:], lead + 2, how, hint)
        option = _OPTION_RE.fullmatch(token)
        if option is not None and _takes_secret(option.group(1)):
            self.pending = ("next", option.group(1))
        return []


def _value_span(token: str, lead: int, how: str, hint: str) -> Spans:
    """The span of the secret in an option's value (all of it, or the password of `user:password`), less
    the quotes around it."""
    inner = token.strip(_QUOTES)
    lead += len(token) - len(token.lstrip(_QUOTES))
    start = 0
    if how == "user":
        separator = _USER_SEPARATORS.search(inner)
        if separator is None:
            return []
        start = separator.end()
    return [(lead + start, lead + len(inner), hint)] if _is_value(inner[start:]) else []


def argv_spans(args: Sequence[object]) -> list[Spans]:
    """Per argument of a command line (non-strings count as empty), the spans of the secrets their
    position reveals: the value after a secret-named option, a program's own password option."""
    spans: list[Spans] = [[] for _ in args]
    if not any(isinstance(arg, str) and _may_be_option(arg) for arg in args):
        return spans  # every rule needs an option (most lists: mounts, capabilities, env entries)
    line = _CommandLine()
    for i, arg in enumerate(args):
        raw = arg if isinstance(arg, str) else ""
        if raw in _SEPARATORS:
            line.end_command()
            continue
        spans[i] = line.read(raw)
        if raw.endswith((";", "&&", "|", "&")):  # `-pX;`: the value is read, then the command ends
            line.end_command()
    return spans


# A command line in a string: words, and the shell's separators as words of their own (so that
# `-a pw|grep PONG` reads `pw`, and `ok;mysql -pX` finds mysql). Quotes are not parsed.
_WORD_RE = re.compile(r"\n|&&|\|\||[;|&]|\$\(|`|[^\s;|&`]+")


def _command_spans(text: str) -> Spans:
    """argv_spans over a string split into shell words."""
    words = list(_WORD_RE.finditer(text))
    return [(word.start() + start, word.start() + end, hint)
            for word, found in zip(words, argv_spans([w.group() for w in words]), strict=True)
            for start, end, hint in found]


# A command line split over two fields (Docker's Path and Args, Entrypoint and Cmd; a pod's command and
# args; a compose service's entrypoint and command): the second is read after the first, so that
# `redis-cli` in one gives `-a X` in the other its meaning.
_COMMAND_PAIRS = (("Path", "Args"), ("Entrypoint", "Cmd"), ("command", "args"), ("entrypoint", "command"))


def command_spans(fields: Mapping[Any, Any], heads: Mapping[str, Any] | None = None) -> dict[Any, list[Spans]]:
    """argv_spans of the lists of a mapping that hold the two halves of a command line, read as one line
    (a walker reads any other list alone, with argv_spans). ``heads``: first halves that stand elsewhere
    (an exported service's entrypoint, inherited from its image and not written)."""
    found: dict[Any, list[Spans]] = {}
    for head, tail in _COMMAND_PAIRS:
        second = fields.get(tail)
        if not isinstance(second, list):
            continue
        first = fields[head] if head in fields else (heads or {}).get(head)
        prefix = [first] if isinstance(first, str) else first
        if isinstance(prefix, list) and prefix:
            line = argv_spans([*prefix, *second])
            found[tail] = line[len(prefix):]
            if isinstance(first, list) and head in fields:
                found[head] = line[:len(prefix)]
    return found
def _jwt_spans(text: str) -> list[tuple[int, int, str]]:
    found = []
    for header in _JWT_HEADER_RE.finditer(text):
        rest = _JWT_REST_RE.match(text, header.end())
        if rest is not None and header.end() - header.start() >= 8:
            found.append((header.start(), rest.end(), "JWT"))
    return found


def _pem_spans(text: str) -> list[tuple[int, int, str]]:
    found = []
    for m in _PEM_PRIVATE_RE.finditer(text):
        end_marker = text.find(f"-----END {m.group(1)}-----", m.end())
        end = len(text) if end_marker < 0 else end_marker + len(f"-----END {m.group(1)}-----")
        found.append((m.start(), end, "PRIVATE_KEY"))
    return found


def mask_env(env: list[str] | None, mask: str = MASK) -> list[str] | None:
    """Docker-style "K=V" entries with secret values replaced by `mask`; order and non-secrets kept."""
    if env is None:
        return None
    masked = []
    for entry in env:
        name, sep, value = entry.partition("=")
        masked.append(f"{name}={mask}" if sep and is_secret(name, value) else entry)
    return masked


def secret_env_values(env: list[str] | None) -> list[str]:
    """The values of the secret entries of Docker-style "K=V" environment entries."""
    values = []
    for entry in env or []:
        name, sep, value = entry.partition("=")
        if sep and value and is_secret(name, value):
            values.append(value)
    return values


def _keep(text: str) -> str:
    return text


_NOTHING = re.compile(r"(?!)")
# The hunt tries every value at every position: bounded, so that an image with thousands of secret ENV
# entries, or one of megabytes, cannot stall a listing. Longer secrets (PEM keys, JWTs) are found by shape.
MAX_HUNTED = 512
MAX_HUNTED_LENGTH = 1024


def _is_word(value: str) -> bool:
    return value.isascii() and value.isalpha()


def _hunt_of(values: Iterable[str], published: frozenset[str] | set[str] = frozenset()) -> re.Pattern[str]:
    """One regex for the values long enough to hunt, longest first (a secret containing another is
    replaced whole). A value of letters only is a word (`postgres`, `changeme`, `paperless`): it is hunted
    only as a word of its own (between spaces or quotes), so that `/var/lib/postgresql/data`,
    `--password-file` or `api_password` stay as they are, and not at all when ``published`` holds it (the
    whole value of an ordinary field such as `POSTGRES_USER=postgres`: a word shown there in clear is the
    program's or the user's name as much as a password). Any other value is hunted anywhere."""
    hunted = sorted({v for v in values if MIN_REPEATED_SECRET <= len(v) <= MAX_HUNTED_LENGTH
                     and not (_is_word(v) and v in published)}, key=lambda v: (-len(v), v))[:MAX_HUNTED]
    words = [re.escape(v) for v in hunted if _is_word(v)]
    others = [re.escape(v) for v in hunted if not _is_word(v)]
    if words:  # one look-behind for all words (one per word stops the engine skipping ahead)
        others.append(rf"(?<![^\s'\"])(?:{'|'.join(words)})(?![^\s'\"])")
    return re.compile("|".join(others)) if others else _NOTHING


def _mask_always(value: str, hint: str) -> str:
    return MASK


class SecretBook:
    """The secrets of one document (or one export) and what replaces each.

    `add` records a value (with the name that suggests its placeholder); `scrub` rewrites a text: the spans
    its own shape reveals (`find_secrets`, any length) and every recorded value at least
    MIN_REPEATED_SECRET long. Overlapping spans are replaced as one. The replacement is MASK, or whatever
    `replacement(value, hint)` answers (the export's `${NAME}`), asked once per value.
    """

    def __init__(self, replacement: Callable[[str, str], str] = _mask_always) -> None:
        self._replacement = replacement
        self.replacements: dict[str, str] = {}
        self._latent: dict[str, str] = {}  # value -> hint: hunted, but recorded only once found
        # Compiled hunts, rebuilt when their values change: all values (for scrub), the latent ones (for
        # collect, which records as it goes and would otherwise rebuild after every new value).
        self._hunt: re.Pattern[str] | None = None
        self._hunt_latent: re.Pattern[str] | None = None
        self._published: set[str] = set()  # whole values of ordinary fields (see _hunt_of)
        self._shapes: dict[str, Spans] = {}  # find_secrets of the texts seen: collect's, again in scrub

    def add(self, value: str, hint: str = "SECRET", replacement: str | None = None) -> str:
        """The value's replacement, recording the value first if new (with `replacement` when given)."""
        if value not in self.replacements:
            if value in self._latent:  # its latent hunt may keep it: finding it again records nothing
                hint = self._latent.pop(value)
            self.replacements[value] = self._replacement(value, hint) if replacement is None else replacement
            self._hunt = None
            core = _CORE_RE.match(value)
            if core is not None:
                self.watch(core.group(1), f"{hint}_CORE")
        return self.replacements[value]

    def watch(self, value: str, hint: str = "SECRET") -> None:
        """Hunt `value` without recording it until it is found (the export's image-inherited secrets: they
        need a variable only if a written field repeats them)."""
        if value and value not in self.replacements:
            self._latent.setdefault(value, hint)
            self._hunt = self._hunt_latent = None

    def publish(self, value: str) -> None:
        """`value` is the whole value of an ordinary field (an environment entry or a label that is no
        secret): a word shown there in clear is not hunted (see _hunt_of)."""
        if value and _is_word(value) and value not in self._published:
            self._published.add(value)
            if value in self._latent or value in self.replacements:  # else no hunt holds it
                self._hunt = self._hunt_latent = None

    def __contains__(self, value: str) -> bool:
        return value in self.replacements

    def _hunted(self, latent_only: bool = False) -> re.Pattern[str] | None:
        if latent_only:
            if self._hunt_latent is None:
                self._hunt_latent = _hunt_of(self._latent, self._published)
            hunt = self._hunt_latent
        else:
            if self._hunt is None:
                self._hunt = _hunt_of([*self._latent, *self.replacements], self._published)
            hunt = self._hunt
        return None if hunt is _NOTHING else hunt

    def spans(self, text: str, hint_prefix: str = "", extra: Iterable[tuple[int, int, str]] = (),
              latent_only: bool = False) -> list[tuple[int, int, str]]:
        """Merged, ordered spans of secrets in `text` (shape, recorded values or only the latent ones, and
        `extra`: those its place in a command line reveals, from `argv_spans`)."""
        shapes = self._shapes.get(text)
        if shapes is None:
            shapes = self._shapes[text] = find_secrets(text)
        raw = [*shapes, *extra]
        hunt = self._hunted(latent_only)
        if hunt is not None and len(text) >= MIN_REPEATED_SECRET:
            raw += [(m.start(), m.end(), "SECRET") for m in hunt.finditer(text)]
        if not raw:
            return raw
        raw.sort(key=lambda s: (s[0], -s[1]))
        merged: list[tuple[int, int, str]] = []
        for start, end, hint in raw:
            if start >= end:
                continue
            if merged and start < merged[-1][1]:
                last = merged[-1]
                merged[-1] = (last[0], max(last[1], end), last[2])
            else:
                merged.append((start, end, f"{hint_prefix}_{hint}" if hint_prefix else hint))
        return merged

    def collect(self, text: str, hint_prefix: str = "", extra: Iterable[tuple[int, int, str]] = ()) -> None:
        """Record the secrets `text` reveals by shape (first pass of an export, so that a value found in
        one field is hunted in all the others)."""
        # Values already recorded need no finding again: only the latent ones are hunted here.
        for start, end, hint in self.spans(text, hint_prefix, extra, latent_only=True):
            self.add(text[start:end], hint)

    def scrub(self, text: str, between: Callable[[str], str] = _keep, hint_prefix: str = "",
              extra: Iterable[tuple[int, int, str]] = ()) -> str:
        spans = self.spans(text, hint_prefix, extra)
        if not spans:
            return between(text)
        out, pos = [], 0
        for start, end, hint in spans:
            out.append(between(text[pos:start]))
            out.append(self.add(text[start:end], hint))
            pos = end
        out.append(between(text[pos:]))
        return "".join(out)


# Inspect keys that name or locate things (ids, names, image references, paths the engine chose, network
# settings): they are never hunted for repeated secrets, so that a password equal to an image name does
# not mangle the document.
IDENTITY_KEYS = frozenset({
    "Id", "Name", "Image", "ImageID", "Hostname", "Domainname", "Driver", "Platform", "Created",
    "NetworkSettings", "GraphDriver", "ResolvConfPath", "HostnamePath", "HostsPath", "LogPath",
    "MountLabel", "ProcessLabel", "AppArmorProfile", "NetworkMode",
})


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and is_secret_option(key)


def _collect_named(value: Any, book: SecretBook) -> None:
    """Record the values whose name says they are secret: environment entries, and string values under a
    secret-looking key at any depth (labels, log options, driver options)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Env" and isinstance(v, list):
                entries = [e for e in v if isinstance(e, str)]
                for s in secret_env_values(entries):
                    book.add(s, "SECRET")
                for entry in entries:
                    name, _, value = entry.partition("=")
                    if not is_secret(name, value):
                        book.publish(value)
            elif isinstance(v, str) and v and _is_secret_key(k):
                book.add(v, str(k))
            elif isinstance(v, str):  # an ordinary label or setting: a word it holds whole is no secret's
                book.publish(v)
            elif k not in IDENTITY_KEYS:
                _collect_named(v, book)
    elif isinstance(value, list):
        for v in value:
            _collect_named(v, book)


def _collect_shapes(value: Any, book: SecretBook, spans: list[Spans] | None = None) -> None:
    """Record what every string reveals by shape or by its place in a command line (``spans``, for a list:
    from its mapping's command_spans)."""
    if isinstance(value, str):
        book.collect(value)
    elif isinstance(value, dict):
        lines = command_spans(value)
        for k, v in value.items():
            if k not in IDENTITY_KEYS:
                _collect_shapes(v, book, lines.get(k))
    elif isinstance(value, list):
        for v, extra in zip(value, spans or argv_spans(value), strict=True):
            if isinstance(v, str):
                book.collect(v, extra=extra)
            else:
                _collect_shapes(v, book)


def secret_values_of(doc: dict[str, Any]) -> tuple[str, ...]:
    """Every secret value a Docker inspect document holds (by name or by shape), for hunting elsewhere
    (the list rows' labels come without the environment, so the runtime keeps these per container)."""
    book = SecretBook()
    _collect_named(doc, book)
    _collect_shapes(doc, book)
    return tuple(book.replacements)


def mask_inspect(doc: dict[str, Any], mask: str = MASK) -> dict[str, Any]:
    """A Docker inspect document with every secret masked: secret environment values, values of
    secret-named labels and options (`HostConfig.LogConfig.Config`, mount driver options), secrets revealed
    by their shape anywhere (command, healthcheck and its output, mounts, …), and every such value
    wherever it repeats outside identity fields. Returns a new document; keys are unchanged."""
    book = SecretBook(lambda value, hint: mask)
    _collect_named(doc, book)
    _collect_shapes(doc, book)
    return _mask_tree(doc, book, mask)


def _mask_tree(value: Any, book: SecretBook, mask: str, key: Any = None,
               identity: frozenset[str] = IDENTITY_KEYS, spans: list[Spans] | None = None) -> Any:
    if isinstance(value, str):
        return mask if value and _is_secret_key(key) else book.scrub(value)
    if isinstance(value, dict):
        out = {}
        lines = command_spans(value)
        for k, v in value.items():
            if k in identity:
                out[k] = v
            elif k == "Env" and isinstance(v, list) and all(isinstance(e, str) for e in v):
                out[k] = [book.scrub(e) for e in mask_env(v, mask) or []]
            else:
                out[k] = _mask_tree(v, book, mask, k, identity, lines.get(k))
        return out
    if isinstance(value, list):  # any list of strings may be a command line (Cmd, Args, Healthcheck.Test)
        return [book.scrub(v, extra=extra) if isinstance(v, str) else _mask_tree(v, book, mask, None, identity)
                for v, extra in zip(value, spans or argv_spans(value), strict=True)]
    return value


# Keys of the Kubernetes details document that name or locate things (see IDENTITY_KEYS).
_K8S_IDENTITY_KEYS = frozenset({"id", "name", "image", "images", "namespace", "node", "owner", "podIP", "hostIP",
                                "runtime", "state", "status", "kind", "container"})


def mask_details(doc: dict[str, Any], secret_values: Iterable[str] = ()) -> dict[str, Any]:
    """A Kubernetes details document (already built with its literal secret env values masked) with those
    values masked wherever they repeat: a container's command and args, and annotations such as
    `kubectl.kubernetes.io/last-applied-configuration`, which hold the whole manifest, env values included.
    Secret-named keys (annotations, labels) and secrets revealed by shape are masked too."""
    book = SecretBook()
    for value in secret_values:
        book.add(value)
    _collect_named(doc, book)
    _collect_shapes(doc, book)
    return _mask_tree(doc, book, MASK, identity=_K8S_IDENTITY_KEYS)


def mask_labels(labels: Mapping[str, str], secret_values: Iterable[str] = ()) -> dict[str, str]:
    """Labels as a list row shows them: a secret-named label's value masked, secrets revealed by shape
    masked, and the container's other secrets (`secret_values`, from its environment) masked where a
    label repeats them."""
    book = SecretBook()
    for value in secret_values:
        if isinstance(value, str):
            book.add(value)
    for v in labels.values():  # every value first, then one hunt for all
        if isinstance(v, str):
            book.collect(v)
    return {k: (MASK if v and _is_secret_key(k) else book.scrub(v)) if isinstance(v, str) else v
            for k, v in labels.items()}


def scrub_text(text: str, secret_values: Iterable[str] = ()) -> str:
    """Free text (an engine error, a status line) with secrets revealed by shape and the given known
    secret values masked."""
    book = SecretBook()
    for value in secret_values:
        book.add(value)
    return book.scrub(text)
