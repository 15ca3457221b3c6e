# vla_ros: `make demo` runs the policy node on the simulated ALOHA, `make test` runs every test.
# Both create or refresh the project's own virtual environment (.venv) from requirements.txt;
# nothing depends on what was installed by hand.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

# Keep ROS 2 traffic on this machine; no hub lookups; headless MuJoCo rendering.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export HF_HUB_OFFLINE := 1
export MUJOCO_GL := egl
export AMENT_PREFIX_PATH := $(abspath $(VENV))

PACKAGE_FILES := setup.py setup.cfg package.xml resource/vla_ros \
	$(shell find vla_ros config launch checkpoints -type f \( -name '*.py' -o -name '*.yaml' -o -name '*.json' -o -name '*.safetensors' \) 2>/dev/null)

.PHONY: venv test test-fast demo bench bench-peer peer-venv freeze clean check-robot-requirements colcon-test docs

venv: $(VENV)/.installed

# Third-party requirements: only when requirements.txt changes.
$(VENV)/.requirements: requirements.txt tools/bootstrap_system.sh
	bash tools/bootstrap_system.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# interbotix_xs_msgs, generated from its .msg/.srv definitions with the rosidl wheels, so that
# tests and the simulation speak the real xs_sdk driver's message types.
$(VENV)/.interbotix_msgs: $(VENV)/.requirements tools/build_interbotix_msgs.sh $(wildcard tools/interbotix_xs_msgs/*/* tools/interbotix_xs_msgs/*.*)
	bash tools/build_interbotix_msgs.sh $(VENV)
	touch $@

# The package itself, installed (not editable) so that its share/ directory and ament index
# marker exist; reinstalled whenever a package file changes. pip puts the executables in bin/ (it
# ignores setup.cfg's install_scripts); they are linked into lib/vla_ros, where ros2 run and
# launch_ros look, as in a colcon install.
$(VENV)/.installed: $(VENV)/.requirements $(VENV)/.interbotix_msgs $(PACKAGE_FILES)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation .
	rm -rf build *.egg-info
	mkdir -p $(VENV)/lib/vla_ros
	for exe in $$($(PY) -c "import importlib.metadata as m; print(*(e.name for e in m.distribution('vla_ros').entry_points if e.group == 'console_scripts'))"); do \
		ln -sfn ../../bin/$$exe $(VENV)/lib/vla_ros/$$exe; done
	touch $@

test: venv
	$(PY) -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests collected: failing"; exit 1; fi; exit $$status

test-fast: venv
	$(PY) -m pytest -m "not slow"

demo: venv
	$(BIN)/vla-ros demo

bench: venv
	$(BIN)/vla-ros bench all

# LeRobot's SmolVLA in its own interpreter (.venv-peer), timed against vla_ros with the same VLM
# dimensions: benchmarks/cpu_bench_peer_smolvla.json (docs/latency.md, "Against SmolVLA").
PEER_VENV := .venv-peer

peer-venv: $(PEER_VENV)/.installed

$(PEER_VENV)/.installed: requirements-peer.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-peer.txt
	touch $@

bench-peer: venv peer-venv
	$(BIN)/vla-ros bench peer --peer-python $(PEER_VENV)/bin/python --output benchmarks/cpu_bench_peer_smolvla.json

# docs/parameters.md from the nodes' parameter specs (test/test_param_docs.py checks it is current).
docs: venv
	$(PY) -m vla_ros.ros.param_docs --output docs/parameters.md

# colcon from PyPI (requirements-colcon.txt) in its own directory, put on the project Python's
# PYTHONPATH: colcon test runs pytest with the Python that runs colcon, which must be the tested venv's.
COLCON := $(VENV)/colcon
COLCON_TEST_MARKERS ?= not slow

$(COLCON)/.installed: requirements-colcon.txt $(VENV)/.requirements
	rm -rf $(COLCON)
	$(PY) -m pip install -q --disable-pip-version-check --target $(COLCON) -r requirements-colcon.txt
	touch $@

# colcon build + colcon test in a scratch workspace under /tmp; fails on 0 tests or any failure.
colcon-test: venv $(COLCON)/.installed
	PYTHONPATH=$(abspath $(COLCON)) bash tools/colcon_test.sh $(abspath $(PY)) "$(COLCON_TEST_MARKERS)"

# requirements-robot.txt resolves on PyPI (wheels only) for Humble's 3.10, 3.11 and Jazzy/Kilted's 3.12.
check-robot-requirements: venv
	$(PY) tools/check_robot_requirements.py requirements-robot.txt

freeze: venv
	$(PY) -m pip freeze --exclude vla_ros

clean:
	rm -rf $(VENV) $(PEER_VENV) build *.egg-info .pytest_cache
