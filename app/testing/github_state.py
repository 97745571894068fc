"""The state behind the GitHub test server: the App, installations, repositories, tokens, pulls.

Plain objects a test builds directly (`add_installation`, `add_repo`) and reads back (`pulls`,
`comments`, `reviews`, `requests`). Authentication rules follow GitHub's documentation.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pygit2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.testing.github_repos import create_bare_repo

JSON = dict[str, Any]
LEVELS = {"read": 1, "write": 2, "admin": 3}
JWT_MAX_LIFETIME_S = 600
CLOCK_SKEW_S = 60
EXPIRED_JWT = (
    "'Expiration time' claim ('exp') must be a numeric value representing the future time at which "
    "the assertion expires"
)


def generate_app_key() -> str:
    """A fresh RSA private key as PEM, like the one GitHub lets you download for an App."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


class ApiError(Exception):
    """A refused request: `status`, `message` and `errors` (objects, or plain strings) are what GitHub answers."""

    def __init__(self, status: int, message: str, errors: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@dataclass
class Installation:
    id: int
    account: str
    account_type: str
    permissions: dict[str, str]
    repositories: list[str] = field(default_factory=list)


@dataclass
class Repo:
    id: int
    full_name: str
    installation_id: int
    path: Path
    default_branch: str
    private: bool
    next_number: int = 1
    issues: dict[int, JSON] = field(default_factory=dict)
    collaborators: dict[str, str] = field(default_factory=dict)
    """login → permission (admin, maintain, write, triage, read); anyone else has none."""


@dataclass
class Token:
    token: str
    installation_id: int
    repositories: list[str]
    permissions: dict[str, str]
    expires_at: float

    def allows(self, permission: str, level: str) -> bool:
        if permission == "metadata":
            return True
        held = self.permissions.get(permission)
        return held is not None and LEVELS[held] >= LEVELS[level]


@dataclass
class LoggedRequest:
    method: str
    path: str
    auth: str  # jwt | token | basic | none | invalid
    status: int = 0


class GitHubState:
    """Everything the test server knows. `base_url` must be set once the server listens."""

    def __init__(self, root: Path, *, app_id: int = 1, app_slug: str = "routines-test", private_key: str = "") -> None:
        self.root = Path(root)
        self.app_id = app_id
        self.app_slug = app_slug
        self.private_key = private_key or generate_app_key()
        key = serialization.load_pem_private_key(self.private_key.encode(), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the App key must be an RSA private key (GitHub Apps sign JWTs with RS256)")
        self.public_key = key.public_key()
        self.base_url = ""
        self.token_ttl_s = 3600.0
        self.installations: dict[int, Installation] = {}
        self.repos: dict[str, Repo] = {}
        self.tokens: dict[str, Token] = {}
        self.pull_requests: dict[str, list[JSON]] = {}
        self.issue_comments: dict[str, list[JSON]] = {}
        self.pull_reviews: dict[str, list[JSON]] = {}
        self.reactions: dict[str, list[JSON]] = {}
        self.requests: list[LoggedRequest] = []
        self.hook_targets: dict[str, Any] = {}
        self.hook_deliveries: list[JSON] = []
        self.redelivery_requests: list[int] = []
        self._next_id = 1000

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def add_installation(
        self, account: str, permissions: dict[str, str] | None = None, *, account_type: str = "Organization"
    ) -> int:
        """Install the App on `account` with these permissions (default: contents, pulls, issues write)."""
        granted = permissions or {"contents": "write", "pull_requests": "write", "issues": "write"}
        installation = Installation(self.new_id(), account, account_type, {"metadata": "read", **granted})
        self.installations[installation.id] = installation
        return installation.id

    def add_repo(
        self,
        full_name: str,
        installation_id: int | None,
        source_dir: Path | None = None,
        default_branch: str = "main",
        *,
        private: bool = True,
    ) -> Path:
        """Create `owner/name` as a bare repository under `root` and return its path.

        `source_dir` may be a git repository (its history is cloned) or a plain folder (its files
        become the initial commit); without it the repository starts with a README commit.
        `installation_id=None` makes a repository the App is not installed on.
        """
        owner, _, name = full_name.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repository {full_name!r} is not owner/name")
        path = self.root / owner / f"{name}.git"
        create_bare_repo(path, name, source_dir, default_branch)
        self.repos[full_name] = Repo(self.new_id(), full_name, installation_id or 0, path, default_branch, private)
        if installation_id is not None:
            self.installations[installation_id].repositories.append(full_name)
        return path

    def add_issue(self, full_name: str, title: str, body: str | None = "", labels: list[str] | None = None) -> int:
        """Open a plain issue and return its number (shared numbering with pull requests).

        `repo.issues[number]` holds title, body, state, labels (names), the author's login and
        timestamps; the issues API shapes it as GitHub does.
        """
        repo = self.repos[full_name]
        number = repo.next_number
        repo.next_number += 1
        now = time.time()
        repo.issues[number] = {
            "number": number,
            "title": title,
            "body": body,
            "state": "open",
            "labels": list(labels or []),
            "user": "octocat",
            "created_at": now,
            "updated_at": now,
            "closed_at": None,
        }
        return number

    def issues(self, full_name: str) -> list[JSON]:
        """The repository's issues (not pull requests), oldest first, as stored."""
        return list(self.repos[full_name].issues.values())

    def commit_files(self, full_name: str, branch: str, files: dict[str, str | None], message: str = "change") -> str:
        """Commit `files` (path → text, None deletes) on `branch`, created from the default branch when new.

        Stands in for someone pushing to the repository; returns the new commit id.
        """
        repo = self.repos[full_name]
        git = pygit2.Repository(str(repo.path))
        ref = git.references.get(f"refs/heads/{branch}") or git.references[f"refs/heads/{repo.default_branch}"]
        parent = ref.peel(pygit2.Commit)
        index = pygit2.Index()
        index.read_tree(parent.tree)
        for path, text in files.items():
            if text is None:
                index.remove(path)
            else:
                index.add(pygit2.IndexEntry(path, git.create_blob(text.encode()), pygit2.enums.FileMode.BLOB))
        tree = index.write_tree(git)
        who = pygit2.Signature("octocat", "octocat@example.invalid")
        return str(git.create_commit(f"refs/heads/{branch}", who, who, message, tree, [parent.id]))

    def pulls(self, full_name: str) -> list[JSON]:
        return list(self.pull_requests.get(full_name, []))

    def comments(self, full_name: str) -> list[JSON]:
        return list(self.issue_comments.get(full_name, []))

    def reviews(self, full_name: str) -> list[JSON]:
        return list(self.pull_reviews.get(full_name, []))

    def issue_reactions(self, full_name: str) -> list[JSON]:
        return list(self.reactions.get(full_name, []))

    def expire_tokens(self) -> None:
        """Make every issued installation token expired, as an hour passing would."""
        for token in self.tokens.values():
            token.expires_at = time.time() - 1

    def issue_token(self, installation_id: int, repositories: list[str], permissions: dict[str, str]) -> Token:
        token = Token(
            "ghs_" + secrets.token_urlsafe(27)[:36],
            installation_id,
            repositories,
            permissions,
            time.time() + self.token_ttl_s,
        )
        self.tokens[token.token] = token
        return token

    def verify_jwt(self, encoded: str) -> None:
        """Check an App JWT the way GitHub does; raises ApiError(401) with GitHub's wording.

        RS256 signed by the App's key, `iss` the App id, `iat` in the past and `exp` at most ten
        minutes after it (both with a minute of clock drift), not expired.
        """
        try:
            claims = jwt.decode(
                encoded,
                self.public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
                leeway=CLOCK_SKEW_S,
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(401, EXPIRED_JWT) from None
        except jwt.PyJWTError:
            raise ApiError(401, "A JSON web token could not be decoded") from None
        if str(claims["iss"]) != str(self.app_id):
            raise ApiError(401, "'Issuer' claim ('iss') must be an Integer")
        too_long = claims["exp"] - claims["iat"] > JWT_MAX_LIFETIME_S + CLOCK_SKEW_S
        if too_long or claims["exp"] > time.time() + JWT_MAX_LIFETIME_S + CLOCK_SKEW_S:
            raise ApiError(401, "'Expiration time' claim ('exp') is too far in the future")

    def authorize(self, value: str | None, full_name: str, permission: str, level: str) -> Token | None:
        """The installation token `value` if it may use `permission` at `level` on `full_name`.

        Anyone may read a public repository (then None comes back); otherwise ApiError: 401 for a
        missing, unknown or expired token, 404 for a repository outside its scope, 403 for a
        permission it does not hold.
        """
        repo = self.repos.get(full_name)
        public_read = repo is not None and not repo.private and level == "read"
        if value is None:
            if public_read:
                return None
            raise ApiError(401, "Requires authentication")
        token = self.tokens.get(value)
        if token is None or token.expires_at <= time.time():
            raise ApiError(401, "Bad credentials")
        if repo is None or (full_name not in token.repositories and not public_read):
            raise ApiError(404, "Not Found")
        if not token.allows(permission, level) and not public_read:
            raise ApiError(403, "Resource not accessible by integration")
        return token
