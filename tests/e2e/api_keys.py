"""The API keys of the e2e default app."""

from capserve.keys import key_hash

# The default app admits these keys (the generative app runs with keys off). ADMIN_KEY has every
# scope and is what the shared fixtures send; the others prove scopes, isolation and limits.
ADMIN_KEY = "sk-capserve-e2e-admin"
CLASSIFY_KEY = "sk-capserve-e2e-classify"
TEAM_A_KEY = "sk-capserve-e2e-team-a"
TEAM_B_KEY = "sk-capserve-e2e-team-b"
LIMITED_KEY = "sk-capserve-e2e-limited"
LIMITED_REQUESTS = {"per_s": 0.2, "burst": 3}
# Online and batch: a small texts burst that refills slowly, so a test sees what counts.
BUDGET_KEY = "sk-capserve-e2e-budget"
BUDGET_TEXTS = {"per_s": 0.05, "burst": 4}
TEST_API_KEYS = [
    {"name": "admin", "sha256": key_hash(ADMIN_KEY), "scopes": ["classify", "batch", "admin"]},
    {"name": "classifier", "sha256": key_hash(CLASSIFY_KEY), "scopes": ["classify"]},
    {"name": "team-a", "sha256": key_hash(TEAM_A_KEY), "scopes": ["batch"]},
    {"name": "team-b", "sha256": key_hash(TEAM_B_KEY), "scopes": ["batch"]},
    {
        "name": "limited",
        "sha256": key_hash(LIMITED_KEY),
        "scopes": ["classify"],
        "rate_limits": {"requests": LIMITED_REQUESTS},
    },
    {
        "name": "budget",
        "sha256": key_hash(BUDGET_KEY),
        "scopes": ["classify", "batch"],
        "rate_limits": {"texts": BUDGET_TEXTS},
    },
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
