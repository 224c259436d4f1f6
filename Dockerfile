# mlzero chat app, CPU only.
#
#   docker build -t mlzero-chat .                      # model mounted at run time (default)
#   docker run --rm -p 127.0.0.1:7860:7860 -v "$PWD/models/tiny-chat:/models/tiny-chat:ro" mlzero-chat
#
#   docker build --target baked -t mlzero-chat:baked .  # model folder copied into the image
#   docker run --rm -p 127.0.0.1:7860:7860 mlzero-chat:baked
#
# Other runtimes: append app flags, e.g. `docker run ... mlzero-chat --model /models/tiny-chat
# --backend gguf --host 0.0.0.0` (needs the folder's gguf/ export; onnx needs onnx/).
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_OFFLINE=1 \
    MLZERO_THREADS=2

# Dependencies first, in their own layers, so code changes do not reinstall them. Their versions
# come from requirements.lock (`-c`: pip may take no other version), the file `make install` and
# the tests use: the container runs what was tested. PyTorch's CPU index is an extra index, so pip
# takes the lock's torch version as its +cpu build (PyPI's own Linux wheel is the multi-GB CUDA one).
# Two layers on purpose (hence the DL3059 ignores): torch is the big one and changes least; the
# names carry no versions because the lock gives them (hence DL3013).
COPY requirements.lock /tmp/requirements.lock
# hadolint ignore=DL3013
RUN pip install -c /tmp/requirements.lock --extra-index-url https://download.pytorch.org/whl/cpu \
        torch
# hadolint ignore=DL3013,DL3059
RUN pip install -c /tmp/requirements.lock \
        numpy \
        transformers \
        tokenizers \
        safetensors \
        onnxruntime \
        xllamacpp \
        gradio \
        gradio_client \
        fastapi \
        uvicorn

# hadolint ignore=DL3059
RUN useradd --create-home --uid 10001 mlzero
WORKDIR /app
# serving/ only: it never imports training/ or scratch/. Owned by root: the user that runs the
# app can read its code but not change it.
COPY serving/ /app/serving/
USER 10001

EXPOSE 7860
# /health answers without the API key (it says only "ok").
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "serving.app"]
# 0.0.0.0 inside the container; publish the port on the host with -p 127.0.0.1:7860:7860 (local
# only; publishing without the address exposes the app on every interface of the host).
CMD ["--model", "/models/tiny-chat", "--backend", "torch", "--host", "0.0.0.0", "--port", "7860"]

# The model baked in: `docker build --target baked` (needs models/tiny-chat in the build context).
FROM base AS baked
COPY models/tiny-chat/ /models/tiny-chat/

# Default target: the model is mounted at /models/tiny-chat when the container runs.
FROM base AS mounted
