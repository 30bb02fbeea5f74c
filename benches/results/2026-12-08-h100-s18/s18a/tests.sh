. benches/device_env.sh
mkdir -p /tmp/t && tar xzf .dev/tests.tgz -C /tmp/t
for p in host gpu; do for t in admission driven prefetch train; do
  echo "== $t $p"
  HOTROW_TEST_PATH=$p timeout 150 /tmp/t/tests/$t --test-threads=4 > $OUT/t_${t}_$p.log 2>&1; echo "rc=$?"
  grep -E 'adapter =|test result|FAILED|panicked' $OUT/t_${t}_$p.log | head -8
done; done
