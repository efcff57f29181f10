"""`loyalty`: the operator's command-line tool.

    loyalty run       the whole platform on embedded PostgreSQL + Redis (what `make run` runs)
    loyalty health    grpc.health.v1 status of all five services; exit 1 unless all SERVING
    loyalty migrate   create and migrate every service's database on LOYALTY_DATABASE_URL
    loyalty seed      load a program (partners, outlets, terminals, rules, members) through the APIs

Service addresses default to 127.0.0.1:50051-50055; override with
LOYALTY_<SERVICE>_GRPC_TARGET (host:port) or LOYALTY_<SERVICE>_GRPC_PORT.
"""

from __future__ import annotations

import argparse
import os
import sys

from shared.config import SERVICES, database_name, with_database
from shared.db import MigrationError, migrate


def _migrate() -> int:
    server_url = os.environ.get("LOYALTY_DATABASE_URL")
    if not server_url:
        print("loyalty migrate: LOYALTY_DATABASE_URL must name the PostgreSQL server", file=sys.stderr)
        return 2
    try:
        for service in SERVICES:
            migrate(service=service, database_url=with_database(server_url, database_name(service)))
            print(f"{service}: migrated {database_name(service)}")
    except MigrationError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loyalty", description="Operate the loyalty platform.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run all five services on embedded PostgreSQL and Redis")
    run.add_argument("--no-demo", action="store_true", help="do not load the demo program and members")
    health = commands.add_parser("health", help="show the health of all five services")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds per service (default 2)")
    commands.add_parser("migrate", help="create and migrate every service's database")
    # `loyalty seed` parses its own flags (see `loyalty seed --help`), so the generated protos it
    # needs are imported only when it runs.
    commands.add_parser("seed", help="load a program and members, idempotently", add_help=False)
    args, seed_options = parser.parse_known_args(argv)
    if seed_options and args.command != "seed":
        parser.error(f"unrecognized arguments: {' '.join(seed_options)}")

    if args.command == "run":
        from services.cli import stack

        return stack.run(demo=not args.no_demo)
    if args.command == "seed":
        from services.cli import seed as seed_command

        return seed_command.main(seed_options)
    if args.command == "health":
        from services.cli import health as health_command

        return health_command.run(args.timeout)
    return _migrate()


if __name__ == "__main__":
    sys.exit(main())
