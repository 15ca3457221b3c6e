"""The life of a vla_ros node process, written once for every executable."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


def run_node(name: str, build: Callable, config_errors: tuple[type[BaseException], ...],
             argv: list[str] | None = None, make_executor: Callable = SingleThreadedExecutor,
             spin: Callable | None = None) -> int:
    """Init rclpy, build the node, spin until Ctrl-C or shutdown, then clean up.

    A configuration error (one of `config_errors` raised while building) is printed as one line
    naming the problem and gives exit status 2, not a traceback. `spin(node, executor)` replaces
    the plain executor.spin() for nodes that own their loop; a node's `close()`, if it has one,
    runs before it is destroyed (stop worker threads, finish pending saves)."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = None
    try:
        try:
            node = build()
        except config_errors as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        # Everything built so far (models, messages, modules) lives as long as the process: keep
        # it out of the collector's full passes, which took ~200 ms and stalled control timers.
        gc.freeze()
        executor = make_executor()  # after rclpy.init: an executor needs a live context
        executor.add_node(node)
        if spin is None:
            executor.spin()
        else:
            spin(node, executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C shuts the context down from a signal handler; a callback or message take that was
        # under way then fails with whatever rclpy raises (e.g. RuntimeError from take_message).
        # That is a shutdown, not a crash; with the context still up it is a real error.
        if node is None or node.context.ok():
            raise
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
