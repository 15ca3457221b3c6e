#!/usr/bin/env bash
# Build vla_ros with colcon in a scratch workspace, run its tests through `colcon test`, and fail
# unless tests ran and none failed (colcon reports success for a package that runs no test at all).
#   usage: tools/colcon_test.sh <python with colcon> [pytest marker expression]
# The sources are the checkout's tracked and unignored files, copied, so that nothing colcon
# writes lands in the checkout. The default marker expression runs every test not marked slow
# (`make test` runs the slow ones).
set -euo pipefail
python=$1
markers=${2:-not slow}
root=$(cd "$(dirname "$0")/.." && pwd)
ws=$(mktemp -d /tmp/vla_ros_colcon.XXXXXX)
trap 'echo "colcon workspace and logs kept in $ws"' EXIT
mkdir -p "$ws/src/vla_ros"
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$ws/src/vla_ros"
cd "$ws"
started=$(date +%s)
"$python" -m colcon build --packages-select vla_ros --event-handlers console_cohesion+ >build.log 2>&1 \
  || { tail -40 build.log; exit 1; }
built=$(date +%s)
for executable in vla-ros policy_node sim_node recorder_node scripted_leader bag_player; do
  test -x "install/vla_ros/lib/vla_ros/$executable" \
    || { echo "colcon install lacks lib/vla_ros/$executable (where ros2 run and launch_ros look)"; exit 1; }
done
# colcon test fails only when pytest cannot run (a collection error); failed tests are counted by
# colcon test-result below.
"$python" -m colcon test --packages-select vla_ros --event-handlers console_direct+ \
  --pytest-args -m "$markers" -p no:cacheprovider >test.log 2>&1 || { tail -40 test.log; exit 1; }
tested=$(date +%s)
summary=$("$python" -m colcon test-result --test-result-base build/vla_ros --verbose 2>&1) && status=0 || status=$?
echo "$summary" | tail -30
echo "colcon build: $((built - started)) s, colcon test: $((tested - built)) s (markers: $markers)"
total=$(echo "$summary" | sed -n -E 's/^Summary: ([0-9]+) tests.*/\1/p')
if [ -z "$total" ] || [ "$total" -eq 0 ]; then
  echo "colcon test ran no tests: failing"; exit 1
fi
[ "$status" -eq 0 ] && { trap - EXIT; rm -rf "$ws"; }
exit "$status"
