"""Write a .env with fresh random keys for a local install, unless one exists.

Used by `make demo` and `make run`. Production sets these in its own .env
(see .env.example); losing SCOREBOARD_ENCRYPTION_KEYS makes the stored
tenant secrets unreadable, so back the file up.
"""

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if target.exists():
        return 0
    target.write_text(
        "# Written by `make` for a local install. Back it up: without\n"
        "# SCOREBOARD_ENCRYPTION_KEYS the stored tenant secrets cannot be read.\n"
        f"SECRET_KEY={secrets.token_urlsafe(50)}\n"
        f"SCOREBOARD_ENCRYPTION_KEYS={Fernet.generate_key().decode()}\n"
        "DEBUG=false\n"
        "ALLOWED_HOSTS=localhost,127.0.0.1,[::1]\n"
    )
    target.chmod(0o600)
    print(f"Wrote {target} with new random SECRET_KEY and SCOREBOARD_ENCRYPTION_KEYS.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
