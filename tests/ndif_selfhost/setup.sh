#!/usr/bin/env bash
# A local NDIF server (PyPI `ndif` 0.1.2) on this machine's CPU, serving avmech's
# tiny-omni, for tests/test_ndif_live.py. The README's "Self-hosting NDIF" explains each
# step; on a GPU host follow the README instead (no CPU shim, no fake GPU).
#
#   bash tests/ndif_selfhost/setup.sh install   # redis (apt), a venv with ndif + torch + avmech, the bridge
#   bash tests/ndif_selfhost/setup.sh start     # redis, S3 (moto as `rustfs`), Ray + controller, API on 127.0.0.1:8001
#   bash tests/ndif_selfhost/setup.sh deploy    # avmech's tiny-omni key (deploy-sandbox: through ndif's sandboxing actor)
#   bash tests/ndif_selfhost/setup.sh test      # tests/test_ndif_live.py against it (client: the checkout's .venv)
#   bash tests/ndif_selfhost/setup.sh stop      # ndif stop (api, ray incl. `ray stop --force`, rustfs/moto, redis)
#   bash tests/ndif_selfhost/setup.sh all       # install start deploy test
#
# Environment: NDIF_REAL (where venv/, home/ and the generated files go; default
# /tmp/ndif-selfhost), PYTHON (the server's interpreter; default python3.11: ndif declares
# >=3.12 but runs on 3.11, where torch's wheels are on this machine's disk).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AVMECH_SRC="$(cd "$HERE/../.." && pwd)"
NDIF_REAL="${NDIF_REAL:-/tmp/ndif-selfhost}"
PYTHON="${PYTHON:-python3.11}"
KEY='avmech.models.serving.AVRemoteModel:{"repo_id": "tiny-omni", "revision": null}'

write_files() {
    mkdir -p "$NDIF_REAL/bin" "$NDIF_REAL/bridge"
    cp "$HERE/ndif_bridge.py" "$NDIF_REAL/bridge/"
    cp "$HERE/rustfs" "$NDIF_REAL/bin/"
    chmod +x "$NDIF_REAL/bin/rustfs"
    cat > "$NDIF_REAL/env.sh" <<EOF
# Source this before any \`ndif ...\` command: the server's environment.
export NDIF_REAL="$NDIF_REAL"
export PATH="\$NDIF_REAL/bin:\$NDIF_REAL/venv/bin:\$PATH"
export NDIF_HOME="\$NDIF_REAL/home"                  # pid files + logs (home/logs/*.log)
export NDIF_RAY_TEMP_DIR=/tmp/ray-ndif               # Ray session dir (short: unix socket paths)
# The controller only manages nodes whose Ray resources include "GPU"; give this CPU
# node one fake GPU of 16 GiB (env values override start.sh's --resources), and keep
# Ray's shared-memory object store small.
export RAY_OVERRIDE_RESOURCES='{"GPU": 1, "cuda_memory_bytes": 17179869184, "object_store_memory": 1000000000}'
export NDIF_DEFAULT_DTYPE=float32                    # avmech's local runs are float32
export NDIF_API_WORKERS=1
export OMP_NUM_THREADS=2
export NDIF_SANDBOX_POOL_SIZE=2                      # sandbox runners kept warm (default 7: too many to start within 30 s on 2 cores)
EOF
    cat > "$NDIF_REAL/models.yaml" <<EOF
# avmech's key for its embedded tiny model. \`ndif deploy tiny-omni\` would mint a
# nnsight TransformersModel key from the HF Hub, so the key is given verbatim.
models:
  - checkpoint: tiny-omni
    model_key: '$KEY'
    dtype: float32
EOF
    cat > "$NDIF_REAL/models-sandbox.yaml" <<EOF
# The same key, served by ndif's sandboxing actor: untrusted requests run in a fresh
# runner process per request, resolved against a meta build of the model.
models:
  - checkpoint: tiny-omni
    model_key: '$KEY'
    dtype: float32
    actor_class: ndif.services.ray.sandbox.model.SandboxModelActor
EOF
}

install() {
    write_files
    if ! command -v redis-server >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
    # Python 3.11 although ndif declares >=3.12: its code runs on 3.11, and here the
    # 3.11 torch wheels lie on local disk (3.12 would download a multi-GB CUDA build).
    [ -x "$NDIF_REAL/venv/bin/python" ] || "$PYTHON" -m venv "$NDIF_REAL/venv"
    local pip="$NDIF_REAL/venv/bin/pip"
    "$pip" install -q pip==26.3
    # The versions measured working (unpinned, --ignore-requires-python lets pip pick
    # sources that need 3.12, numpy's among them).
    "$pip" install -q --ignore-requires-python -c "$HERE/constraints.txt" \
        "ndif[api,ray]==0.1.2" nnsight==0.8.1 torch==2.14.1 torchvision==0.29.1 \
        transformers==5.24.0 "moto[server]==5.2.5" \
        einops jaxtyping numpy pandas pyarrow matplotlib seaborn av soundfile soxr pillow \
        tqdm typer pydantic filelock
    # The Qwen vocabulary file avmech reads (no dependencies wanted).
    "$pip" install -q --no-deps qwen-agent==0.0.34
    local site
    site="$("$NDIF_REAL/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # avmech importable in every server process (what `pip install -e $AVMECH_SRC` does,
    # without writing an egg-info into the checkout).
    echo "$AVMECH_SRC" > "$site/avmech-src.pth"
    # The bridge (nnsight 0.8.1 API + CPU shim), loaded in every process of this venv.
    printf '%s\nimport ndif_bridge\n' "$NDIF_REAL/bridge" > "$site/ndif_bridge.pth"
    "$NDIF_REAL/venv/bin/python" -c 'import ndif, nnsight, torch, ray, avmech; print("ndif", ndif.__file__, "nnsight", nnsight.__version__, "torch", torch.__version__, "ray", ray.__version__, "avmech", avmech.__file__)'
}

start() {
    # shellcheck disable=SC1091
    source "$NDIF_REAL/env.sh"
    cd "$NDIF_REAL"
    ndif start
    # Ready when the API answers /status with the cluster (Ray + controller up).
    for _ in $(seq 1 90); do
        if curl -sf http://127.0.0.1:8001/status >/dev/null; then
            echo "API up: http://127.0.0.1:8001"; return 0
        fi
        sleep 2
    done
    echo "API did not come up; see $NDIF_HOME/logs/" >&2; return 1
}

deploy() {
    # shellcheck disable=SC1091
    source "$NDIF_REAL/env.sh"
    cd "$NDIF_REAL"
    ndif deploy -f "${1:-models.yaml}"
}

run_test() {
    cd "$AVMECH_SRC"
    AVMECH_NDIF_HOST=http://127.0.0.1:8001 .venv/bin/python -m pytest -q -m ndif tests/test_ndif_live.py
}

stop() {
    # shellcheck disable=SC1091
    source "$NDIF_REAL/env.sh"
    cd "$NDIF_REAL"
    # Note: stopping ray runs `ray stop --force`, which ends every Ray process of this user.
    ndif stop
}

[ $# -gt 0 ] || set -- all
for step in "$@"; do
    case "$step" in
        install) install ;;
        files) write_files ;;
        start) start ;;
        deploy) deploy models.yaml ;;
        deploy-trusted) source "$NDIF_REAL/env.sh"; cd "$NDIF_REAL"; ndif deploy -f models.yaml --trusted ;;
        deploy-sandbox) deploy models-sandbox.yaml ;;
        evict) source "$NDIF_REAL/env.sh"; cd "$NDIF_REAL"; ndif evict --all ;;
        test) run_test ;;
        stop) stop ;;
        all) install; start; deploy models.yaml; run_test ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
done
