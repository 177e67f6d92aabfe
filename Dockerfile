# Scoreboard's one image: gunicorn by default; the Celery worker, beat and migrations
# with another command (see docker-compose.yml and README.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCOREBOARD_VAR_DIR=/var/lib/scoreboard

RUN groupadd --system --gid 10001 scoreboard \
    && useradd --system --uid 10001 --gid scoreboard --no-create-home \
        --home-dir /var/lib/scoreboard --shell /usr/sbin/nologin scoreboard \
    && install -d -o scoreboard -g scoreboard -m 0750 /var/lib/scoreboard

WORKDIR /app

# The pinned requirements first, so that this layer is rebuilt only when they change.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .

# The settings refuse to load without a secret key, encryption keys and allowed hosts;
# collectstatic gets throwaway ones that live only for this command, not in the image.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    SCOREBOARD_ENCRYPTION_KEYS="$(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')" \
    ALLOWED_HOSTS=build.invalid \
    python manage.py collectstatic --noinput --verbosity 0

# The code and the static files stay root's and read-only; only /var/lib/scoreboard is writable.
USER scoreboard

EXPOSE 8000
CMD ["gunicorn", "scoreboard.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--worker-tmp-dir", "/dev/shm", "--access-logfile", "-"]
