from django.db import migrations, models

from scoreboard.migrations._vendor_sql import run_for_vendor

# Every change to a tenant's day in the rollup marks that day stale for the fleet band,
# in the same transaction, however the change was made (a fetch, a backfill, a tenant
# deleted). On PostgreSQL once per statement over the days it touched.
POSTGRESQL_UP = """
CREATE FUNCTION scoreboard_fleet_day_stale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO scoreboard_stalefleetday (metric, day)
    SELECT DISTINCT metric, day FROM changed
    ON CONFLICT (metric, day) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER daily_score_fleet_insert AFTER INSERT ON scoreboard_dailyscore
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scoreboard_fleet_day_stale();
CREATE TRIGGER daily_score_fleet_update AFTER UPDATE ON scoreboard_dailyscore
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scoreboard_fleet_day_stale();
CREATE TRIGGER daily_score_fleet_delete AFTER DELETE ON scoreboard_dailyscore
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION scoreboard_fleet_day_stale();
"""

POSTGRESQL_DOWN = """
DROP TRIGGER daily_score_fleet_insert ON scoreboard_dailyscore;
DROP TRIGGER daily_score_fleet_update ON scoreboard_dailyscore;
DROP TRIGGER daily_score_fleet_delete ON scoreboard_dailyscore;
DROP FUNCTION scoreboard_fleet_day_stale();
"""

# Not INSERT OR IGNORE: the rollup's upsert is the outer statement, and its conflict
# handling would override the trigger's.
SQLITE_UP = [
    f"""
CREATE TRIGGER daily_score_fleet_{event.lower()} AFTER {event} ON scoreboard_dailyscore
BEGIN
    INSERT INTO scoreboard_stalefleetday (metric, day)
    SELECT {row}.metric, {row}.day WHERE NOT EXISTS (
        SELECT 1 FROM scoreboard_stalefleetday s WHERE s.metric = {row}.metric AND s.day = {row}.day
    );
END
"""
    for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))
]

SQLITE_DOWN = [
    f"DROP TRIGGER daily_score_fleet_{event}" for event in ("insert", "update", "delete")
]


class Migration(migrations.Migration):
    dependencies = [
        ("scoreboard", "0005_reading_metric_time"),
    ]

    operations = [
        migrations.CreateModel(
            name="FleetDay",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "metric",
                    models.CharField(
                        choices=[("secure_score", "Secure Score for Devices")],
                        default="secure_score",
                        max_length=32,
                    ),
                ),
                ("day", models.DateField()),
                ("tenants", models.PositiveIntegerField()),
                ("p10", models.FloatField(null=True)),
                ("median", models.FloatField(null=True)),
                ("p90", models.FloatField(null=True)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("metric", "day"), name="fleet_day_once")
                ],
            },
        ),
        migrations.CreateModel(
            name="StaleFleetDay",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "metric",
                    models.CharField(
                        choices=[("secure_score", "Secure Score for Devices")],
                        default="secure_score",
                        max_length=32,
                    ),
                ),
                ("day", models.DateField()),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("metric", "day"), name="stale_fleet_day_once")
                ],
            },
        ),
        migrations.RunPython(
            run_for_vendor(
                "fleet band triggers", {"postgresql": POSTGRESQL_UP, "sqlite": SQLITE_UP}
            ),
            run_for_vendor(
                "fleet band triggers", {"postgresql": POSTGRESQL_DOWN, "sqlite": SQLITE_DOWN}
            ),
        ),
    ]
