# Run 7: one entry point for whichever Hopper card the device tool lends (it lends H200s too).
#   bash docs/measurements/run7_2026-12-07/run7.sh a    (first call, <= 590 s)
#   bash docs/measurements/run7_2026-12-07/run7.sh b    (second call, <= 590 s)
# H100: a = h100_a.sh, b = h100_b.sh.
# H200: a = h200_a.sh (tests, sweeps, a recorded H200 table), b = h200_b.sh (decode, bench).
D=docs/measurements/run7_2026-12-07
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "card: $G, step $1"
case "$G:$1" in
  *H100*:a) bash $D/h100_a.sh ;;
  *H100*:b) bash $D/h100_b.sh ;;
  *H200*:a) bash $D/h200_a.sh ;;
  *H200*:b) bash $D/h200_b.sh ;;
  *) echo "no plan for $G step $1" ;;
esac
