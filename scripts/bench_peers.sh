#!/usr/bin/env bash
# Peer comparison on CPU: omni-edge's Thinker decoder against llama.cpp (llama-cpp-python) and
# onnxruntime-genai on the same weights, the Thinker of the `medium` preset (Qwen2.5-Omni-3B widths, 2 layers,
# random seeded weights). Writes bench/peers-cpu.json; bench/README.md ("Peers on CPU") explains the table.
#
#   bash scripts/bench_peers.sh [--quick] [--FLAG=VALUE ...] [STEP ...]
#
# STEPs, in order (default: all): setup extract convert export bench.
#   setup    side virtual environment $PEERS_VENV (default /work/peers-venv), OUTSIDE the repository: the peers
#            are never dependencies of omni-edge. llama-cpp-python is built from its sdist (~15 min on 2 cores)
#            without -march=native: a native build picked AMX and died with an illegal instruction on a KVM
#            guest, so the SIMD level is named (AVX2/FMA/F16C, what every x86-64 box of the last decade has).
#   extract  the medium Thinker as a plain Qwen2ForCausalLM checkpoint + tokenizer, checked against
#            transformers' Qwen2.5-Omni Thinker on a text prompt (text-only TMRoPE positions equal plain RoPE).
#   convert  GGUF f32 / q8_0 / q4_0 (llama.cpp's convert_hf_to_gguf.py from the sdist's vendor/llama.cpp, then
#            llama.cpp's quantizer through llama_cpp.llama_model_quantize) and onnxruntime-genai's model builder
#            fp32 / int8 / int4 (cpu). The converter does not know the preset tokenizer's hash (it is a small
#            byte-level BPE made by omni_edge.export.tiny_tokenizer), so scripts/peers_gguf.py tells it the
#            pre-tokenizer explicitly: "gpt-2" (ByteLevel with the GPT-2 split regex, which that tokenizer is).
#   export   omni-edge bundles of the same checkpoint: fp32, int8 and int4-awq (--calib synthetic). A quantized
#            export that fails is recorded as a missing row with its reason (the run goes on).
#   bench    scripts/peers_bench.py: prefill 128/512, decode at context 128/512/2048, 1 and 2 threads, every
#            runtime in one child process per measurement, interleaved (A B C A B C ...), medians of repeats;
#            every run is appended to $PEERS_WORK/runs.jsonl (peers_bench.py run --from-runs reports it).
#
# --quick: 2 repeats instead of 3 and no 2048 context (the json says "quick": true). Other --FLAG=VALUE go to
# peers_bench.py run: --budget-min=N starts no repeat that would end past N minutes (the json's method.cut
# says where it stopped), --repeats, --threads, --contexts, --decode-tokens.
#
# Memory: the medium exports, the genai builds and every benchmark child can pass 4 GiB, so they take
# /tmp/bigmem.lock (flock): on a shared machine only one big job runs at a time. The GGUF conversion and
# quantization stay near 1.6 GiB (measured) and run without it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers_venv="${PEERS_VENV:-/work/peers-venv}"
work="${PEERS_WORK:-/work/peers-work}"
lock="${PEERS_LOCK:-/tmp/bigmem.lock}"
llama_version="0.3.36"
genai_version="0.18.0"
quick=()
bench_args=()  # other --flags go to scripts/peers_bench.py run, e.g. --repeats=3 --budget-min=40
steps=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    setup | extract | convert | export | bench) steps+=("$arg") ;;
    --*) bench_args+=("$arg") ;;
    *) echo "bench_peers.sh: unknown argument '$arg' (steps: setup extract convert export bench; flag --quick)" >&2; exit 2 ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || steps=(setup extract convert export bench)
mkdir -p "$work"
log() { echo "[bench_peers $(date +%H:%M:%S)] $*" >&2; }
big() { flock "$lock" "$@"; }  # one >4 GiB job at a time on the shared machine

# The project's environment (omni-export, the runtime, transformers for the extraction check), entered only by
# the steps that need it and after setup: env.sh names its own variables (venv, stamp) and puts its python first.
project_env() {
  # shellcheck disable=SC1091
  source "$root/scripts/env.sh"
}

step_setup() {
  if [ -f "$peers_venv/.peers-installed" ]; then log "side env $peers_venv already installed"; return; fi
  case "$(realpath -m "$peers_venv")/" in
    "$root"/*) echo "bench_peers.sh: PEERS_VENV=$peers_venv is inside the repository; the peers stay outside it" >&2; exit 2 ;;
  esac
  log "side env $peers_venv (outside the repo; never a project dependency)"
  "${PEERS_PYTHON:-python3}" -m venv "$peers_venv"
  "$peers_venv/bin/python" -m pip install --quiet --upgrade pip
  # torch (CPU build, pinned as in env.sh), transformers and gguf deps for llama.cpp's converter; onnx,
  # onnx-ir for genai's model builder; psutil for peak RSS.
  "$peers_venv/bin/python" -m pip install --quiet "torch==2.13.0" transformers safetensors sentencepiece protobuf \
    numpy psutil onnx onnx-ir "onnxruntime-genai==$genai_version"
  log "building llama-cpp-python $llama_version from source (nice, 2 jobs, no AMX/native)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 nice -n 10 "$peers_venv/bin/python" -m pip install --no-binary llama-cpp-python \
    --verbose "llama-cpp-python==$llama_version" > "$work/llama-build.log" 2>&1 \
    || { tail -40 "$work/llama-build.log" >&2; exit 1; }
  # The converter ships only in the sdist (vendor/llama.cpp), not in the wheel: unpack it next to the work.
  "$peers_venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: -d "$work/sdist" "llama-cpp-python==$llama_version"
  tar xzf "$work/sdist/llama_cpp_python-$llama_version.tar.gz" -C "$work" \
    "llama_cpp_python-$llama_version/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$llama_version/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$llama_version/vendor/llama.cpp/gguf-py"
  "$peers_venv/bin/python" -m pip install --quiet "$work/llama_cpp_python-$llama_version/vendor/llama.cpp/gguf-py"
  touch "$peers_venv/.peers-installed"
}

record() {  # the commands the json's "commands" key lists (each once, also when its output already exists)
  grep -qxF -- "$*" "$work/commands.txt" 2>/dev/null || echo "$*" >> "$work/commands.txt"
}

step_extract() {
  project_env
  local ckpt
  ckpt="$(python -c "from omni_edge.export.tiny import ensure_preset_checkpoint; print(ensure_preset_checkpoint('medium'))")"
  record "python scripts/peers_extract.py $ckpt $work/qwen2"
  if [ -f "$work/qwen2/parity.json" ]; then log "qwen2 checkpoint already extracted"; return; fi
  log "extracting the medium Thinker from $ckpt as a Qwen2 checkpoint, checking its logits"
  big python "$root/scripts/peers_extract.py" "$ckpt" "$work/qwen2"
}

step_convert() {
  local py="$peers_venv/bin/python" llama="$work/llama_cpp_python-$llama_version/vendor/llama.cpp"
  mkdir -p "$work/gguf" "$work/genai"
  for p in fp32 int8 int4; do
    record "python -m onnxruntime_genai.models.builder -i $work/qwen2 -o $work/genai/$p -p $p -e cpu -c $work/genai/cache"
    if [ ! -f "$work/genai/$p/genai_config.json" ]; then
      log "onnxruntime-genai builder $p (cpu)"
      big "$py" -m onnxruntime_genai.models.builder -i "$work/qwen2" -o "$work/genai/$p" -p "$p" -e cpu \
        -c "$work/genai/cache" > "$work/genai/$p.log" 2>&1 || { tail -20 "$work/genai/$p.log" >&2; exit 1; }
    fi
  done
  record "python scripts/peers_gguf.py convert $llama $work/qwen2 $work/gguf/f32.gguf"
  if [ ! -f "$work/gguf/f32.gguf" ]; then
    log "GGUF f32 (llama.cpp convert_hf_to_gguf.py, pre-tokenizer given explicitly)"
    "$py" "$root/scripts/peers_gguf.py" convert "$llama" "$work/qwen2" "$work/gguf/f32.gguf"
  fi
  for q in q8_0 q4_0; do
    record "python scripts/peers_gguf.py quantize $work/gguf/f32.gguf $work/gguf/$q.gguf $q"
    if [ ! -f "$work/gguf/$q.gguf" ]; then
      log "GGUF $q (llama.cpp quantizer)"
      "$py" "$root/scripts/peers_gguf.py" quantize "$work/gguf/f32.gguf" "$work/gguf/$q.gguf" "$q"
    fi
  done
}

failure_reason() {  # LOG STATUS: exit status, peak RSS and wall time (from time -v), the stage it was in
  local reason="omni-export exited with status $2"
  [ "$2" -eq 137 ] && reason+=" (SIGKILL: killed, on this machine by the out-of-memory killer unless a person stopped it)"
  echo "$reason"
  grep -E "Maximum resident|Elapsed" "$1" | sed 's/^[[:space:]]*//'
  echo "last stage: $(tr '\r' '\n' < "$1" | grep -E '[0-9]+/[0-9]+ \[' | tail -1 | sed 's/:.*//')"
}

step_export() {
  project_env
  mkdir -p "$work/omni"
  local precision name out args status
  # --components thinker: the benchmark measures the Thinker alone; the other graphs would only add export
  # time and memory (the Thinker graph and tables are the same as in a full bundle).
  for precision in fp32 int8 int4-awq; do
    name="${precision%-awq}" out="$work/omni/${precision%-awq}"
    args=(--model medium --target cpu --components thinker --precision "$precision")
    [ "$precision" = fp32 ] || args+=(--calib synthetic)
    record "omni-export ${args[*]} --out $out"
    [ -f "$out/manifest.json" ] && { log "omni-edge $name bundle already exported"; continue; }
    log "omni-export ${args[*]}"
    rm -f "$work/omni/$name.failed"
    status=0
    /usr/bin/time -v flock "$lock" omni-export "${args[@]}" --out "$out" --overwrite > "$work/omni/$name.log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
      # A failed quantized export is a missing row with its reason, not the end of the run.
      failure_reason "$work/omni/$name.log" "$status" > "$work/omni/$name.failed"
      log "omni-edge $name export failed: $(head -1 "$work/omni/$name.failed")"
    fi
  done
}

step_bench() {
  project_env
  log "benchmark (each thread count's block of runs holds $lock)"
  python "$root/scripts/peers_bench.py" run --work "$work" --peers-python "$peers_venv/bin/python" \
    --out "$root/bench/peers-cpu.json" --tree "$(git -C "$root" describe --always --dirty)" "${quick[@]}" "${bench_args[@]}"
}

for step in "${steps[@]}"; do
  "step_$step"
done
