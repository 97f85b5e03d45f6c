"""Describe the machine a benchmark ran on (printed with every figure)."""

from __future__ import annotations

import os
import platform

ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")


def machine() -> str:
    """CPU model, the instruction-set flags int8 and float kernels depend on, cores, OS, Python, ORT."""
    cpu, model, flags = platform.processor() or "?", None, None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if model is None and line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif flags is None and line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    flags = [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    cpu = model or cpu
    cpu = f"{cpu} [{' '.join(flags or []) or 'none of ' + '/'.join(ISA_FLAGS)}]"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import onnxruntime as ort

        ortv = ort.__version__
    except ImportError:
        ortv = "-"
    return f"{cpu}; {cores} cores; {platform.system()} {platform.release()}; Python {platform.python_version()}; onnxruntime {ortv}"


PEAK_RSS_WRAPPER = (
    "import atexit, sys\n"
    "def _report():\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "    sys.stderr.write(f'WBC_PEAK_RSS_KIB {hwm}\\n')\n"
    "atexit.register(_report)\n"
    "sys.argv = ['wbc'] + sys.argv[1:]\n"
    "from flows.cli import main\n"
    "main()\n"
)


def run_wbc_peak_rss(args: list[str]) -> tuple[int, int, str]:
    """Run `wbc ARGS` in a fresh interpreter; return (exit code, its own peak RSS in KiB, stderr).

    The child reports VmHWM of its own address space at exit: ru_maxrss would include the parent's pages
    at fork time (it survives exec), which misreports when the parent is large (e.g. has torch loaded).
    """
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", PEAK_RSS_WRAPPER, *args], capture_output=True, text=True)
    kib = 0
    for line in r.stderr.splitlines():
        if line.startswith("WBC_PEAK_RSS_KIB "):
            kib = int(line.split()[1])
    return r.returncode, kib, r.stderr


def start_serve(tmp, model, *args: str):
    """Start `wbc serve` with a fresh home under ``tmp`` on a free port; return (process, port) once up."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    tmp = Path(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(WBC_HOME=str(tmp / "home"), PREFECT_HOME=str(tmp / "prefect"), WBC_MODEL=str(model))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wbc = str(Path(sys.executable).parent / "wbc")
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - the child writes to it for its whole life
    proc = subprocess.Popen(
        [wbc, "serve", "--inbox", str(tmp / "inbox"), "--out", str(tmp / "out"), "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    end = time.monotonic() + 180
    while "wbc serve: UI" not in (tmp / "serve.log").read_text():
        if time.monotonic() > end or proc.poll() is not None:
            raise SystemExit((tmp / "serve.log").read_text()[-3000:])
        time.sleep(0.5)
    return proc, port
