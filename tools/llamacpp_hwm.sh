#!/usr/bin/env bash
# Peak RSS (VmHWM) of a llama-bench run too slow to finish, sampled while it fills its depth: the
# issue's 32k bar is llama.cpp's q4_0 K+V cache, whose flash-attention fill of 16k tokens takes
# 16 min on the 2-core VM (32k: about an hour). Prints "seconds VmHWM VmRSS" every 5 s, then
# stops llama-bench after LIMIT seconds: the last VmHWM is a lower bound of its peak.
#   LIMIT=480 bash tools/llamacpp_hwm.sh [GGUF] [DEPTH]
set -u
cd "$(dirname "$0")/.."
M=${1:-models/cache/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
D=${2:-32672}
LIMIT=${LIMIT:-480}
B=build/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench
[ -x "$B" ] || { echo "llama-bench not built: python tools/llamacpp_bench.py setup"; exit 1; }
"$B" -m "$M" -p 0 -n 32 -d "$D" -ctk q4_0 -ctv q4_0 -fa 1 -t 2 -r 1 -o jsonl > /dev/null 2>&1 &
P=$!
t=0
while kill -0 $P 2>/dev/null && [ $t -lt "$LIMIT" ]; do
  sleep 5; t=$((t + 5))
  echo "$t $(grep -E 'VmHWM|VmRSS' /proc/$P/status 2>/dev/null | tr -s ' \t' ' ' | tr '\n' ' ')"
done
kill $P 2>/dev/null; wait $P 2>/dev/null
echo "stopped after $t s"
