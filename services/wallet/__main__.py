"""Process entry point: `python -m services.wallet`."""

from services.wallet.api import register
from shared.server import main

if __name__ == "__main__":
    main("wallet", register)
