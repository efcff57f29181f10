import pytest

from shared.config import ConfigError, grpc_target, load_config

BASE_ENV = {
    "LOYALTY_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "LOYALTY_REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_defaults_follow_the_fixed_port_plan() -> None:
    ports = {s: load_config(s, BASE_ENV) for s in ("processing", "wallet", "cards", "antifraud", "notifications")}
    assert [c.grpc_port for c in ports.values()] == [50051, 50052, 50053, 50054, 50055]
    assert [c.metrics_port for c in ports.values()] == [9101, 9102, 9103, 9104, 9105]


def test_each_service_gets_its_own_database_on_the_shared_server() -> None:
    assert load_config("wallet", BASE_ENV).database_url == "postgresql://postgres@127.0.0.1:5432/loyalty_wallet"
    assert load_config("cards", BASE_ENV).database_url == "postgresql://postgres@127.0.0.1:5432/loyalty_cards"


def test_service_prefix_wins_over_the_platform_prefix() -> None:
    env = {**BASE_ENV, "LOYALTY_GRPC_PORT": "7000", "LOYALTY_WALLET_GRPC_PORT": "7002"}
    assert load_config("wallet", env).grpc_port == 7002
    assert load_config("cards", env).grpc_port == 7000


def test_only_the_wallet_plans_its_statements_once_by_default() -> None:
    modes = {s: load_config(s, BASE_ENV).db_plan_cache_mode for s in ("processing", "wallet", "cards")}
    assert modes == {"processing": "AUTO", "wallet": "FORCE_GENERIC_PLAN", "cards": "AUTO"}
    env = {**BASE_ENV, "LOYALTY_WALLET_DB_PLAN_CACHE_MODE": "auto"}
    assert load_config("wallet", env).db_plan_cache_mode == "AUTO"


def test_an_explicit_service_database_url_is_used_as_is() -> None:
    env = {**BASE_ENV, "LOYALTY_WALLET_DATABASE_URL": "postgresql://u@db:5432/ledger"}
    assert load_config("wallet", env).database_url == "postgresql://u@db:5432/ledger"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOYALTY_WALLET_GRPC_PORT", "abc", "LOYALTY_WALLET_GRPC_PORT='abc': expected an integer between 0 and 65535"),
        ("LOYALTY_GRPC_PORT", "70000", "LOYALTY_GRPC_PORT='70000': expected an integer between 0 and 65535"),
        ("LOYALTY_LOG_LEVEL", "LOUD", "LOYALTY_LOG_LEVEL='LOUD': expected one of DEBUG, INFO, WARNING, ERROR"),
        ("LOYALTY_REDIS_URL", "localhost:6379", "LOYALTY_REDIS_URL='localhost:6379': expected a URL like redis://"),
        (
            "LOYALTY_DATABASE_URL",
            "mysql://x/y",
            "LOYALTY_DATABASE_URL='mysql://x/y': expected a URL like postgresql://",
        ),
        ("LOYALTY_SHUTDOWN_GRACE_S", "-1", "LOYALTY_SHUTDOWN_GRACE_S='-1': expected a number between 0 and 600"),
        ("LOYALTY_DB_POOL_SIZE_MIN", "50", "LOYALTY_WALLET_DB_POOL_SIZE_MIN=50 exceeds DB_POOL_SIZE_MAX=16"),
        (
            "LOYALTY_DB_PLAN_CACHE_MODE",
            "sometimes",
            "LOYALTY_DB_PLAN_CACHE_MODE='sometimes': expected one of AUTO, FORCE_GENERIC_PLAN, FORCE_CUSTOM_PLAN",
        ),
    ],
)
def test_a_bad_variable_is_named_in_the_error(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config("wallet", {**BASE_ENV, variable: value})
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize("missing", ["LOYALTY_DATABASE_URL", "LOYALTY_REDIS_URL"])
def test_a_missing_required_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    with pytest.raises(ConfigError, match=missing):
        load_config("wallet", env)


def test_unknown_service_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown service 'ledger'"):
        load_config("ledger", BASE_ENV)


def test_clients_find_services_on_their_default_or_configured_ports() -> None:
    assert grpc_target("cards", {}) == "127.0.0.1:50053"
    assert grpc_target("cards", {"LOYALTY_CARDS_GRPC_PORT": "6003"}) == "127.0.0.1:6003"
    assert grpc_target("cards", {"LOYALTY_CARDS_GRPC_TARGET": "cards.svc:443"}) == "cards.svc:443"
