#!/usr/bin/env bash
# Build TensorRT engines from a `vla export` directory, on the Jetson itself (engines are
# specific to the GPU, the TensorRT version and the JetPack they were built on).
#
#   Target: JetPack 6.x (L4T r36, CUDA 12.6, TensorRT 10.3, Python 3.10).
#   Usage:  ./build_trt_engines.sh EXPORT_DIR [--fp16] [--batch N] [--workspace-mib M]
#
#   --fp16            let TensorRT pick fp16 kernels (from the fp32 graphs; recommended on Orin)
#   --batch N         optimise for batch N and accept 1..N (default 1: one robot, one observation)
#   --workspace-mib   builder workspace (default 2048)
#
# Writes EXPORT_DIR/trt/{[text_encoder,]encoder,denoiser_step|head}.engine and one build log per
# engine (text_encoder only for models whose instruction a frozen text encoder reads).
# The shapes come from EXPORT_DIR/export_meta.json (cameras, image size, chunk, text length).
# Not run in this repository's CI: TensorRT is not available there (no NVIDIA GPU).
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

[[ $# -ge 1 ]] || usage 2
[[ "$1" == "-h" || "$1" == "--help" ]] && usage 0
DIR="$1"; shift
FP16=""; BATCH=1; WORKSPACE=2048
while [[ $# -gt 0 ]]; do
  case "$1" in
    --fp16) FP16="--fp16"; shift ;;
    --batch) BATCH="$2"; shift 2 ;;
    --workspace-mib) WORKSPACE="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 ;;
  esac
done

META="$DIR/export_meta.json"
[[ -f "$META" ]] || { echo "error: $META not found (run: vla export --policy CKPT --out $DIR)" >&2; exit 2; }

TRTEXEC="${TRTEXEC:-$(command -v trtexec || true)}"
[[ -z "$TRTEXEC" && -x /usr/src/tensorrt/bin/trtexec ]] && TRTEXEC=/usr/src/tensorrt/bin/trtexec
[[ -n "$TRTEXEC" ]] || { echo "error: trtexec not found (JetPack: /usr/src/tensorrt/bin/trtexec; or set TRTEXEC=)" >&2; exit 2; }

PYTHON="${PYTHON:-python3}"
# Shape profiles: min = batch 1 / shortest text, opt = the usual case, max = --batch / max text.
# Read with the standard library only (json), so no extra package is needed on the Jetson.
eval "$("$PYTHON" - "$META" "$BATCH" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1])); b = int(sys.argv[2]); m = meta["model"]
s, h, a = m["image_size"], m["chunk_size"], m["action_dim"]
lo, hi = meta["dynamic_shapes"]["text_length"]
opt_len = min(hi, max(lo, 16))
nc, d = m["num_cond_tokens"], m["cond_dim"]
te = meta.get("text_encoder")  # a frozen text encoder: its own graph, features into the encoder
def shapes(bb, ll):
    if te is None:
        parts = [f"state:{bb}x{m['state_dim']}", f"tokens:{bb}x{ll}", f"attention_mask:{bb}x{ll}"]
    else:
        tt = 1 if te["output"] == "pooled" else ll
        parts = [f"state:{bb}x{m['state_dim']}", f"text_features:{bb}x{tt}x{te['feature_dim']}",
                 f"text_mask:{bb}x{tt}"]
    parts += [f"image_{c}:{bb}x3x{s}x{s}" for c in m["camera_names"]]
    return ",".join(parts)
print(f"ENC_MIN='{shapes(1, lo)}'"); print(f"ENC_OPT='{shapes(b, opt_len)}'"); print(f"ENC_MAX='{shapes(b, hi)}'")
print(f"TEXT_ENCODER='{'yes' if te else ''}'")
print(f"TXT_MIN='tokens:1x{lo},attention_mask:1x{lo}'"); print(f"TXT_OPT='tokens:1x{opt_len},attention_mask:1x{opt_len}'")
print(f"TXT_MAX='tokens:{b}x{hi},attention_mask:{b}x{hi}'")
print(f"KIND='{meta['sampler']['kind']}'")
print(f"HEAD_MIN='cond:1x{nc}x{d}'"); print(f"HEAD_MAX='cond:{b}x{nc}x{d}'")
ce = "x".join(str(v) for v in (m.get("cond_encoded_shape") or []))  # per sample, e.g. 4x128
print(f"X_MIN='x_t:1x{h}x{a},t:1,cond_encoded:1x{ce}'"); print(f"X_MAX='x_t:{b}x{h}x{a},t:{b},cond_encoded:{b}x{ce}'")
PY
)"

mkdir -p "$DIR/trt"
build() {  # name, extra trtexec args...
  local name="$1"; shift
  echo "== $name.engine"
  "$TRTEXEC" --onnx="$DIR/$name.onnx" --saveEngine="$DIR/trt/$name.engine" $FP16 \
    --memPoolSize=workspace:"$WORKSPACE" "$@" 2>&1 | tee "$DIR/trt/$name.build.log" | tail -n 5
}

if [[ -n "$TEXT_ENCODER" ]]; then
  build text_encoder --minShapes="$TXT_MIN" --optShapes="$TXT_OPT" --maxShapes="$TXT_MAX"
fi
build encoder --minShapes="$ENC_MIN" --optShapes="$ENC_OPT" --maxShapes="$ENC_MAX"
if [[ "$KIND" == "regression" ]]; then
  build head --minShapes="$HEAD_MIN" --optShapes="$HEAD_MAX" --maxShapes="$HEAD_MAX"
else
  build denoiser_step --minShapes="$X_MIN" --optShapes="$X_MAX" --maxShapes="$X_MAX"
fi
echo "engines in $DIR/trt/ (see docs/export.md for running them)"
