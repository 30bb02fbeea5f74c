# Runs the integration tests (release binaries built here: cargo test --release --no-run, stripped
# and packed into .dev/tests.tgz) on the lent H200, each binary's output under $OUT.
. benches/device_env.sh
mkdir -p /tmp/t && tar xzf .dev/tests.tgz -C /tmp/t
export HOTROW_MODEL_CASES=${HOTROW_MODEL_CASES:-100}
for t in model cache batched compact gather misuse ops tables multi_gpu device limits resources shaders; do
  echo "== $t"
  timeout ${TEST_TIMEOUT:-300} /tmp/t/tests/$t --test-threads=2 --show-output > $OUT/$t.log 2>&1; echo "rc=$?"
  grep -E 'adapter =|test result|FAILED|^failures|^    [a-z_]+$' $OUT/$t.log | head -12
done
