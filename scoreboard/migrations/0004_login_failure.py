from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("scoreboard", "0003_daily_score"),
    ]

    operations = [
        migrations.CreateModel(
            name="LoginFailure",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("username", models.CharField(max_length=150)),
                ("address", models.GenericIPAddressField(blank=True, null=True)),
                ("at", models.DateTimeField()),
            ],
            options={
                "indexes": [
                    models.Index(fields=["username", "at"], name="login_failure_user"),
                    models.Index(fields=["address", "at"], name="login_failure_address"),
                    models.Index(fields=["at"], name="login_failure_at"),
                ],
            },
        ),
    ]
