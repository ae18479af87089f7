# bench/lib.sh — helpers shared by the benchmark scripts (sourced).

# Median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# A loopback port nobody answers on.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

# Waits until URL/health answers 200, at most TIMEOUT_S seconds.
wait_health() { # url timeout_s
    local end=$((SECONDS + $2))
    until curl -sf -o /dev/null "$1/health"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}

# a / b with 3 decimals ("n/a" when b is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.3f", a / b }'; }
