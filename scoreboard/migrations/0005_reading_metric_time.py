from django.db import migrations

# Queries over every tenant for a time window (the part days at either end of a chart
# range, the fleet band) read this index instead of probing each tenant's. It is raw SQL,
# not Reading.Meta.indexes, so the index carries its covering columns on every database.
CREATE = (
    "CREATE INDEX reading_metric_time "
    "ON scoreboard_reading (metric, measured_at, tenant_id, value)"
)


class Migration(migrations.Migration):
    dependencies = [
        ("scoreboard", "0004_login_failure"),
    ]

    operations = [
        migrations.RunSQL(CREATE, "DROP INDEX reading_metric_time"),
    ]
