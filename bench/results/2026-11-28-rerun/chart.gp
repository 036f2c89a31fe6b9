set terminal pngcairo size 1200,560 font 'sans,10'
set output '/work/main/bench/results/2026-11-28/chart.png'
set title 'Gateway CPU µs per request (median), 2026-11-28 15:24 UTC'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set datafile missing '-'
set logscale y
set yrange [1:*]
set ylabel 'CPU µs / request (log scale)'
set grid ytics
set key top left
set xtics rotate by -30
plot '/work/main/bench/results/2026-11-28/chart.dat' using 2:xtic(1) title columnheader(2), '/work/main/bench/results/2026-11-28/chart.dat' using 3:xtic(1) title columnheader(3), '/work/main/bench/results/2026-11-28/chart.dat' using 4:xtic(1) title columnheader(4), '/work/main/bench/results/2026-11-28/chart.dat' using 5:xtic(1) title columnheader(5), '/work/main/bench/results/2026-11-28/chart.dat' using 6:xtic(1) title columnheader(6), '/work/main/bench/results/2026-11-28/chart.dat' using 7:xtic(1) title columnheader(7)
