# points, then tests; logs packed so that at most 8 files come back
bash benches/run_h200_points.sh .dev/sh/s18a.txt w2,w3,w7 > /dev/null 2>&1
cat $OUT/points.log | cut -c1-2500; cat $OUT/clock_phases.txt
bash .dev/sh/tests.sh 2>&1 | tee $OUT/tests.txt
cd $OUT && tar czf logs.tgz logs t_*.log && rm -rf logs t_*.log s18a.txt; ls $OUT
