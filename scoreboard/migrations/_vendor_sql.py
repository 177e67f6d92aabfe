"""Raw SQL that a migration runs in the dialect of the database it finds.

Not a migration: Django's loader skips modules whose names start with "_".
"""


def run_for_vendor(what: str, statements_by_vendor: dict[str, str | list[str]]):
    """A RunPython function running the statements written for this database's vendor."""

    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        statements = statements_by_vendor.get(vendor)
        if statements is None:
            raise RuntimeError(f"No {what} for {vendor}: Scoreboard runs on PostgreSQL or SQLite.")
        if isinstance(statements, str):
            statements = [statements]
        for statement in statements:
            schema_editor.execute(statement, params=None)

    return run
