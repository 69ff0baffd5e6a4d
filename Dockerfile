# katapool and a KataGo engine in one image; no compiling. Two targets:
#
#   docker build --target cpu -t katapool:cpu .   Debian + PoCL: KaTrain's KataGo (OpenCL) on the CPU
#   docker build --target gpu -t katapool:gpu .   NVIDIA: KataGo's official CUDA release
#
# Both run `katapool start` in the foreground, with the WebSocket, /healthz and /metrics on port 6364
# and the data directory (OpenCL tuning, caches, daemon state and token) in the volume /data.
# The engine and network live in /opt/katapool, outside the volume, so a rebuilt image brings
# its new engine. docker-compose.yml runs them; docs/deploy.md explains the choices.
#
# With --build-arg EXTRAS=kuberay either image is also a Ray node for deploy/kuberay:
#   docker build --target cpu --build-arg EXTRAS=kuberay -t katapool:cpu-ray .
#   docker build --target gpu --build-arg EXTRAS=kuberay -t katapool:gpu-ray .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.5.1-runtime-ubuntu22.04
# The Ray that EXTRAS=kuberay installs, the same in both images: every node of a Ray cluster
# must run the same version (deploy/kuberay/raycluster.yaml names it in rayVersion).
ARG RAY_VERSION=2.60.0

# --- cpu ----------------------------------------------------------------------------------------
FROM --platform=linux/amd64 ${PYTHON_IMAGE} AS cpu
# katapool's extras to install as well (pyproject.toml): none for Compose and systemd, `kuberay`
# for a Ray node. An image with extras also gets wget, with which KubeRay before 1.6 probes the
# health of a Ray node (later ones ask over HTTP themselves).
ARG EXTRAS=
ARG RAY_VERSION

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

# OpenCL on the CPU: the ICD loader and PoCL (as bin/bootstrap installs them).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ocl-icd-libopencl1 pocl-opencl-icd ${EXTRAS:+wget} \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY katapool /src/katapool
COPY configs /src/configs
RUN python -m venv /opt/katapool/venv \
 && echo "ray==${RAY_VERSION}" > /src/constraints.txt \
 && /opt/katapool/venv/bin/pip install -c /src/constraints.txt "/src${EXTRAS:+[${EXTRAS}]}" \
 && rm -rf /src
ENV PATH=/opt/katapool/venv/bin:$PATH

# The default engine and network: KaTrain's pinned wheel from PyPI (sha256-checked, AppImage
# extracted). Installed into /opt/katapool, given fixed names for KATAPOOL_KATAGO/MODEL, and
# made readable for the unprivileged user (installs are staged in private directories).
RUN KATAPOOL_DATA_DIR=/opt/katapool KATAPOOL_CACHE_DIR=/tmp/katapool-cache katapool engine install \
 && rm -rf /tmp/katapool-cache \
 && python -c "import json, os; m = json.load(open('/opt/katapool/engines/manifest.json')); \
e = next(x for x in m['engines'] if x['name'] == m['default']); \
os.symlink(e['path'], '/opt/katapool/katago'); os.link(e['model'], '/opt/katapool/default.bin.gz')" \
 && chmod -R a+rX /opt/katapool \
 && /opt/katapool/katago version

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home katapool \
 && install -d -o katapool -g katapool -m 0700 /data
# RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL: the two images have different patch releases of
# Python 3.11 (the python image's, Ubuntu's); Ray, by default, refuses a node or driver whose
# Python differs from the head's in any digit, and this relaxes that to 3.11 alike.
ENV KATAPOOL_DATA_DIR=/data \
    KATAPOOL_KATAGO=/opt/katapool/katago \
    KATAPOOL_MODEL=/opt/katapool/default.bin.gz \
    RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor
USER katapool
WORKDIR /data
EXPOSE 6364
# Beyond loopback the WebSocket needs the token in /data/daemon/token; /healthz never does.
CMD ["katapool", "start", "--no-dashboard", "--listen", "ws://0.0.0.0:6364"]

# --- gpu ----------------------------------------------------------------------------------------
# KataGo's Linux CUDA release, asset katago-v<V>-cuda12.5-cudnn8.9.7-linux-x64.zip (the name
# `katapool engine install --from release --backend cuda` guesses): CUDA 12.5 runtime libraries
# from the base image, cuDNN 8.9.7 from NVIDIA's apt repository configured in it.
FROM --platform=linux/amd64 ${CUDA_IMAGE} AS gpu
ARG KATAGO_VERSION=1.18.1
# KataGo publishes no checksums; pass the zip's sha256 to have it checked (an install without
# one prints the digest it recorded).
ARG KATAGO_SHA256=
ARG EXTRAS=
ARG RAY_VERSION

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3.11 python3.11-venv \
      libcudnn8=8.9.7.29-1+cuda12.2 ${EXTRAS:+wget} \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY katapool /src/katapool
COPY configs /src/configs
RUN python3.11 -m venv /opt/katapool/venv \
 && echo "ray==${RAY_VERSION}" > /src/constraints.txt \
 && /opt/katapool/venv/bin/pip install -c /src/constraints.txt "/src[nvidia${EXTRAS:+,${EXTRAS}}]" \
 && rm -rf /src
ENV PATH=/opt/katapool/venv/bin:$PATH

# KataGo's Linux releases are AppImages. A build has no FUSE: the installer's `katago version`
# check runs it with APPIMAGE_EXTRACT_AND_RUN, then it is extracted once, so engines start
# directly (no FUSE, no unpacking on every start).
RUN APPIMAGE_EXTRACT_AND_RUN=1 KATAPOOL_DATA_DIR=/opt/katapool KATAPOOL_CACHE_DIR=/tmp/katapool-cache \
      katapool engine install --from release --version ${KATAGO_VERSION} --backend cuda \
        ${KATAGO_SHA256:+--sha256 ${KATAGO_SHA256}} \
 && rm -rf /tmp/katapool-cache \
 && python -c "import json, os; m = json.load(open('/opt/katapool/engines/manifest.json')); \
e = next(x for x in m['engines'] if x['name'] == m['default']); \
os.symlink(e['path'], '/opt/katapool/katago')" \
 && bin="$(readlink -f /opt/katapool/katago)" \
 && if [ "$(head -c 11 "$bin" | tail -c 3)" = "$(printf 'AI\002')" ]; then \
      cd "$(dirname "$bin")" && "$bin" --appimage-extract >/dev/null \
      && ln -sfn "$PWD/squashfs-root/AppRun" /opt/katapool/katago; \
    fi \
 && chmod -R a+rX /opt/katapool \
 && /opt/katapool/katago version

# The release ships no network: serve the same default network as the cpu image (KaTrain's).
COPY --from=cpu /opt/katapool/default.bin.gz /opt/katapool/default.bin.gz

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home katapool \
 && install -d -o katapool -g katapool -m 0700 /data
ENV KATAPOOL_DATA_DIR=/data \
    KATAPOOL_KATAGO=/opt/katapool/katago \
    KATAPOOL_MODEL=/opt/katapool/default.bin.gz \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor
USER katapool
WORKDIR /data
EXPOSE 6364
# Without --gpus, `katapool start` runs one member per NVIDIA GPU it finds.
CMD ["katapool", "start", "--no-dashboard", "--listen", "ws://0.0.0.0:6364"]
