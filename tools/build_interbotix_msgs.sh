#!/usr/bin/env bash
# Generate interbotix_xs_msgs (tools/interbotix_xs_msgs) into a venv that holds the ROS 2 wheels
# from PyPI, so that development machines and CI use the real driver's message types.
#   usage: tools/build_interbotix_msgs.sh <venv>
# The PyPI wheels' exported CMake files name the include directories of the Python they were
# built with (/opt/python/cp3XX-cp3XX/...); those are rewritten to this venv's Python and numpy.
set -euo pipefail
venv=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
python="$venv/bin/python"
read -r py_include np_include < <("$python" -c \
  'import sysconfig, numpy; print(sysconfig.get_paths()["include"], numpy.get_include())')
{ grep -rlZ --include='*.cmake' '/opt/python/cp3' "$venv/share" || true; } | xargs -0 -r sed -i -E \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${py_include}#g" \
  -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_include}#g"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
cmake -S "$here/interbotix_xs_msgs" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$python" -DBUILD_TESTING=OFF >"$build/configure.log" 2>&1 \
  || { tail -30 "$build/configure.log"; exit 1; }
cmake --build "$build" -j 2 >"$build/build.log" 2>&1 || { tail -30 "$build/build.log"; exit 1; }
cmake --install "$build" >/dev/null
"$python" -c 'from interbotix_xs_msgs.msg import JointGroupCommand, JointSingleCommand' \
  && echo "interbotix_xs_msgs installed into $venv"
